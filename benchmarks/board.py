"""The claims board: every registered claim's variants fine-tuned on the schema benchmark over
seeds, judged with their preconditions, written to docs/claims.md (``--quick``: docs/claims-quick.md).
The code is ``composir.experiments.board``."""

from composir.experiments.board import main

if __name__ == "__main__":
    main()
