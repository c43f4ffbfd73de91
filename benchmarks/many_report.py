"""The table and figure of bench_many.py's interleaved run:

    python benchmarks/many_report.py benchmarks/results/many/rates.json

writes results.md (fits per second of each peer, and fit_many's ratio to
the fastest) and fits_per_second.png beside the JSON."""
import json
import sys
from pathlib import Path

PEERS = ("fit_many", "numba-prange", "jax-vmap", "torch-vmap", "fit_fused-loop")


def main(path):
    path = Path(path)
    rows = json.loads(path.read_text())
    lines = ["| threads | K x N | dtype | trained | " + " | ".join(PEERS) +
             " | fit_many / fastest peer |", "|---" * (len(PEERS) + 5) + "|"]
    for r in rows:
        rates = [f"{r['rates'][p]:.3g}" if p in r["rates"] else "-" for p in PEERS]
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else "-"
        lines.append(f"| {r['threads']} | {r['K']:.0e} x {r['N']} | {r['dtype']} | "
                     f"{r['trained']} | " + " | ".join(rates) + f" | {ratio} |")
    (path.parent / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(10, 4.5))
    labels = [f"{r['threads']}t {r['K']:.0e}x{r['N']}" for r in rows]
    width = 0.8 / len(PEERS)
    for i, p in enumerate(PEERS):
        ax.bar([j + i * width for j in range(len(rows))],
               [r["rates"].get(p, 0) for r in rows], width, label=p)
    ax.set_yscale("log")
    ax.set_ylabel("fits per second")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], labels, rotation=30,
                  ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title("fit_many against batched peers (final_bias, SGD, float32)")
    fig.tight_layout()
    fig.savefig(path.parent / "fits_per_second.png", dpi=100)


if __name__ == "__main__":
    main(sys.argv[1])
