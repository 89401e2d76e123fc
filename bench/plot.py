"""The benchmark plot (matplotlib, a bench-only extra: ``pip install
matplotlib``).

Left: cost of saving one scan point vs scan length, us and the peers,
log-log.  Right: per-record cost of appending and of replaying vs journal
length (figure 7): flat lines mean no degradation.
"""

from __future__ import annotations


def save(path: str, peer_curves: dict, scaling_curve: dict | None,
         title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6.2))
    markers = iter("os^vDx*")
    for label, curve in peer_curves.items():
        if label.startswith("_"):
            continue
        xs = sorted(curve)
        ours = label.startswith("us")
        left.plot(xs, [curve[x] for x in xs], marker=next(markers),
                  linewidth=2.5 if ours else 1.5, label=label)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("scan length N (points already saved)")
    left.set_ylabel("cost of saving one more point (s)")
    left.set_title("Per-point cost vs scan length")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                ncol=2)

    if scaling_curve:
        xs = sorted(scaling_curve)
        for key, label in (("append", "append (fsync=group)"),
                           ("replay", "replay (recovery core)")):
            pts = [(x, scaling_curve[x][key]) for x in xs
                   if scaling_curve[x].get(key) is not None]
            right.plot([x for x, _ in pts], [y * 1e6 for _, y in pts],
                       marker="o", label=label)
        right.set_xscale("log")
        right.set_ylim(bottom=0)
        right.set_xlabel("journal length (records)")
        right.set_ylabel("cost per record (us)")
        right.set_title("Scaling: per-record cost vs journal length")
        right.grid(True, which="both", alpha=0.3)
        right.legend(fontsize=8, loc="upper center",
                     bbox_to_anchor=(0.5, -0.13), ncol=2)
    else:
        right.set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
