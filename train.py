"""Entry point: compose conf/config.yaml with Hydra and run one job (``consparse.train.run``)."""

import sys

from consparse.quiet import silence_known_noise

silence_known_noise()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from consparse.errors import ConsparseError, TrainingDiverged  # noqa: E402

# Exit status of a run whose training loss stopped being finite (2 is bad input, 128 + N a signal).
DIVERGED_EXIT = 3


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from consparse.interruption import RunInterrupted
    from consparse.train import run

    try:
        run(cfg)
    except RunInterrupted as interruption:
        # Exits with 128 + the signal's number once re-raised (a SystemExit).
        print(f"consparse: interrupted: {interruption}", file=sys.stderr)
        raise
    except TrainingDiverged as error:
        print(f"consparse: diverged: {error}", file=sys.stderr)
        sys.exit(DIVERGED_EXIT)
    except ConsparseError as error:
        # A problem the user can fix: say what it is without a traceback, and exit non-zero.
        print(f"consparse: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from consparse.inspect_command import explain_inspection

    # `-m ... --cfg hydra` and `--cfg hydra --resolve` show the first job's config instead of failing.
    sys.argv = explain_inspection(sys.argv)
    main()
