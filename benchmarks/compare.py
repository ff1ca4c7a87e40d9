"""One registered claim's variants trained from scratch on the plain synthetic benchmark over
seeds, compared per family with paired intervals (docs/compare-*.md). The code is
``composir.experiments.compare``."""

from composir.experiments.compare import main

if __name__ == "__main__":
    main()
