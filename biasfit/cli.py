"""The `biasfit` command line."""
import argparse
import sys


def _train(args) -> int:
    import biasfit

    inputs, labels = biasfit.tutorial_data()
    model = biasfit.BasicNN()

    def show(epoch, loss, bias):
        print(f"epoch {epoch:4d}  total_loss {loss:.6g}  final_bias {bias:.6g}")

    result = biasfit.fit(model, inputs, labels, callback=show)
    state = "converged" if result.converged else "did not converge"
    print(f"{state} after {result.epochs_run} epochs: final_bias = "
          f"{result.final_bias:.4f}, total_loss = {result.final_loss:.3g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biasfit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="fit final_bias to the tutorial data")
    train.set_defaults(run=_train)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
