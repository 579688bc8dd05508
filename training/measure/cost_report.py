"""`launch.py cost`: the docs/algorithms.md §1 cost model for a named teacher/student pair, or a given F_t/F_s
ratio."""

from __future__ import annotations

from ..budget import check_convention, cost_fraction, k_for_budget
from ..cost import measure_pair
from ..errors import UserError


def parse_k(text: str, N: int) -> int:
    """--k: a count ("192") or a fraction of N ("0.75"), resolved like selection.k."""
    from unixkd.selection import resolve_k

    try:
        k = int(text)
    except ValueError:
        try:
            k = float(text)
        except ValueError:
            raise UserError(f"--k {text!r} must be a count (192) or a fraction of N (0.75)") from None
    try:
        return resolve_k(k, N)
    except ValueError as e:
        raise UserError(f"--k {text}: {e}") from None


def cost_report(
    *,
    teacher: str | None,
    student: str | None,
    image_size: int = 224,
    N: int = 256,
    k: str = "0.75",
    num_classes: int = 1000,
    convention: str = "paper",
    ft_over_fs: float | None = None,
    bs_over_fs: float | None = None,
    budget: float | None = None,
) -> dict:
    """F_t, F_s, B_s (FLOPs per image; None when only a ratio is given) and each method's cost as a fraction of KD.

    `Bs` is the student backward under the chosen convention (paper: = F_s); `Bs_measured` the counted one.
    """
    check_convention(convention, key="--convention")
    if N < 1:
        raise UserError(f"--batch-size {N} must be >= 1")
    kk = parse_k(str(k), N)
    Ft, Fs, Bs_measured, ratio, bs_ratio_measured = _per_image(
        teacher, student, image_size, num_classes, convention, ft_over_fs, bs_over_fs
    )
    bs_ratio = 1.0 if convention == "paper" else bs_ratio_measured
    per = {"N": N, "Ft": ratio, "Fs": 1.0, "Bs": bs_ratio}  # only the ratios matter: per F_s

    def fraction(k: int, scores_batch: bool) -> float:
        return cost_fraction(k, scores_batch=scores_batch, **per)

    report = {
        "teacher": teacher if ft_over_fs is None else None,
        "student": student if ft_over_fs is None else None,
        "image_size": image_size if ft_over_fs is None else None,
        "N": N,
        "k": kk,
        "convention": convention,
        "Ft": Ft,
        "Fs": Fs,
        "Bs": None if Fs is None else Fs * bs_ratio,
        "Bs_measured": Bs_measured,
        "units": "FLOPs per image (a multiply-add = 2), torch FlopCounterMode with the grouped-conv backward fix",
        "ft_over_fs": ratio,
        "bs_over_fs": bs_ratio,
        "ratio_kd": 1.0,
        "ratio_random": fraction(kk, scores_batch=False),
        "ratio_unix": fraction(kk, scores_batch=True),
    }
    if budget is not None:
        report["budget"] = budget
        k_unix = k_for_budget(budget, scores_batch=True, method="UNIX", key="--budget", **per)
        report["k_unix_for_budget"] = k_unix
        report["ratio_unix_at_budget_k"] = fraction(k_unix, scores_batch=True)
        report["k_random_for_budget"] = k_for_budget(budget, scores_batch=False, method="Random", key="--budget", **per)
    return report


def _per_image(teacher, student, image_size, num_classes, convention, ft_over_fs, bs_over_fs):
    """(F_t, F_s, B_s measured, F_t/F_s, B_s/F_s): counted on the named models, or the given ratios (no FLOPs)."""
    if ft_over_fs is None:
        if not teacher or not student:
            raise UserError("cost needs --teacher and --student (or --ft-over-fs R to skip building models)")
        from ..models import create_model

        Ft, Fs, Bs = measure_pair(create_model(teacher, num_classes), create_model(student, num_classes), image_size)
        return Ft, Fs, Bs, Ft / Fs, Bs / Fs
    if not ft_over_fs > 0:
        raise UserError(f"--ft-over-fs {ft_over_fs} must be > 0")
    if convention == "measured" and bs_over_fs is None:
        raise UserError("--convention measured with --ft-over-fs needs --bs-over-fs (B_s/F_s, about 2)")
    return None, None, None, ft_over_fs, bs_over_fs


def format_cost(r: dict) -> str:
    lines = []
    if r["Ft"] is not None:
        lines.append(f"teacher {r['teacher']} -> student {r['student']} at {r['image_size']} px (GFLOPs per image)")
        lines.append(
            f"  F_t {r['Ft'] / 1e9:.4f}   F_s {r['Fs'] / 1e9:.4f}   B_s {r['Bs_measured'] / 1e9:.4f} measured "
            f"({r['Bs_measured'] / r['Fs']:.2f} x F_s)"
        )
    lines.append(f"  F_t/F_s {r['ft_over_fs']:.2f}")
    name = {"paper": "paper, B_s = F_s", "measured": f"measured, B_s = {r['bs_over_fs']:.2f} x F_s"}[r["convention"]]
    lines.append(f"per-step cost, N = {r['N']}, k = {r['k']}, as a fraction of KD ({name}):")
    lines.append(f"  KD      {r['ratio_kd']:.4f}")
    lines.append(f"  Random  {r['ratio_random']:.4f}")
    lines.append(f"  UNIX    {r['ratio_unix']:.4f}")
    if "budget" in r:
        lines.append(
            f"budget {r['budget']}: UNIX k = {r['k_unix_for_budget']} ({r['ratio_unix_at_budget_k']:.4f} "
            f"of KD), Random k = {r['k_random_for_budget']}"
        )
    return "\n".join(lines)
