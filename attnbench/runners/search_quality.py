"""Search quality: how close an approximate patch search gets to the exact nearest neighbour.

One implementation of the measures (exact search, patch cost, recall, distance ratio,
reconstruction MSE, frame loading), used by the ``search`` suite's cell runner (:func:`run`,
below) and by ``attnbench_plugins.psal_quality`` (PSAL's convergence report).

The runner reconstructs frame A (queries) from frame B's patches (keys; values = B's pixels), as
the PSAL paper's reconstruction test does, and compares with the exact nearest neighbour found
by brute force on the same input, for several iteration counts (the convergence curve users need
to pick ``iterations``), or for the mechanism's own parameters ``sweep`` (e.g. faiss' nlist x
nprobe, every combination; a parameter's values may differ per image size):

* ``mse``: mean squared error of the reconstruction to A over valid query centres (rows sampled
  every ``row_step`` rows at large sizes, the same rows for both methods);
* ``mse_ratio``: that MSE over the exact 1-NN's (PSAL-1's target: <= 1.10 at 10 iterations);
* ``recall``: share of queries whose match is as close as the exact 1-NN (ties count);
* ``distance_ratio``: mean patch distance of the matches over the exact one's;
* ``time_s``: wall time of the call (index build included for index-based searches), the median
  of ``min_repeats`` or more timed calls (``time_budget_s`` allowing; :func:`~attnbench.measure.timing.time_call`),
  with ``time_iqr_s`` and ``time_samples_s``: one call on a shared VM varies by 10-30 %, enough
  to decide a 3x comparison.

The mechanism only sees the ``AttentionMechanism`` interface: the match of each query is read
back by appending the key centres' coordinates to the values (for k = 1 the output at a query is
exactly the value at its match).
"""
from __future__ import annotations

import hashlib
import itertools
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from ..cells import CellSpec
from ..errors import UserError
from ..interface import ProblemShape
from ..measure.call import CallBudget, check_feasible, check_output, estimate_metrics, oom_as_outcome
from ..measure.timing import time_call
from ..options import ImageOptions, MeasureOptions
from ..registry import mechanism
from ..tasks.embedded import stereo_pair
from ..tasks.images import read_image, square_resize, to_tensor
from ..tasks.user_data import user_pairs

#: what a cell's own point (else its sweep's last) gives the cell's headline metrics
HEADLINE = ("mse", "mse_ratio", "recall", "distance_ratio", "time_s", "time_iqr_s")

#: two costs within this relative distance are a tie (recall counts a tie with the exact 1-NN as found)
TIE_TOLERANCE = 1e-5

#: how a sweep parameter's values keyed by image size are written, for the messages
_BY_SIZE = "{ 256 = [64, 256], 512 = [1024] }"


def _is_size(key: Any) -> bool:
    """A size key as TOML gives it: the decimal digits of a positive integer, as ``str(size)`` writes it."""
    return isinstance(key, str) and key.isascii() and key.isdigit() and key == str(int(key)) and int(key) > 0


@dataclass(frozen=True)
class SearchOptions(ImageOptions, MeasureOptions):
    """Options of the ``search`` suite (an unknown key in a suite file is an error); the timing
    options (``min_repeats``, ``time_budget_s``, ``min_run_time``) are every suite's."""

    #: iteration counts of the convergence curve (the mechanism's own count is always added)
    iterations: list[int] = field(default_factory=list)
    #: above ``all_rows_up_to`` px the exact search runs on every ``row_step``-th row
    row_step: int = 1
    all_rows_up_to: int = 256
    #: the preset measures the user's own pair: ``--data`` is required (checked before any work)
    require_data: bool = False
    #: ``"b"``: search frame B's patches in frame A (the video pair's direction)
    query_frame: str = "a"
    #: mechanism name -> {parameter: [values] or {size: [values]}}: the points of its time-to-quality
    #: curve; values keyed by size (``nlist = { 256 = [64, 256], 512 = [1024] }``) because a grid that
    #: suits 256 px can scan so much at 512 px that the cell times out
    sweep: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.query_frame not in ("a", "b"):
            raise UserError(f"option query_frame must be \"a\" or \"b\", got {self.query_frame!r}")
        self.check_sweep()

    def check_sweep(self) -> None:
        """Each ``sweep.NAME`` names a known mechanism and one or more of its parameters, each with a
        list of values it accepts, or a table of such lists keyed by image size (every combination is
        a point; a misspelled name or parameter would silently drop the curve)."""
        from ..registry import check_spec, resolve

        for name, table in self.sweep.items():
            resolve(name)  # an unknown name lists the valid ones
            if not isinstance(table, dict) or not table:
                raise UserError(f"option sweep.{name} must be a table of parameter = [values], e.g. "
                                f"{{ nlist = [64, 256], nprobe = [1, 4] }}, got {table!r}"[:300])
            for param, values in table.items():
                where = f"option sweep.{name}.{param}"
                by_size: dict[Optional[str], Any] = values if isinstance(values, dict) else {None: values}
                if not by_size:
                    raise UserError(f"{where} must be a list of values or a table of size = [values], e.g. {_BY_SIZE}, got {{}}")
                for size, listed in by_size.items():
                    if size is not None and not _is_size(size):
                        raise UserError(f"{where}: size {size!r} must be a positive integer (px), e.g. {_BY_SIZE}")
                    if not isinstance(listed, list) or not listed:
                        also = " (or a table of size = [values])" if size is None else ""
                        raise UserError(f"{where}{'' if size is None else '.' + size} must be a non-empty list of "
                                        f"values{also}, got {listed!r}"[:300])
                    for value in listed:
                        check_spec(name, {param: value})

    def check_sizes(self, sizes: Sequence[int]) -> None:
        """Every parameter keyed by size has values at each of ``sizes`` (the sizes the cells run at):
        a missing one is found before any work, not when its cell starts."""
        for name, table in self.sweep.items():
            for param, values in table.items():
                missing = [str(size) for size in sizes if isinstance(values, dict) and str(size) not in values]
                if missing:
                    raise UserError(f"option sweep.{name}.{param} has no values for {', '.join(missing)} px: add "
                                    f"{', '.join(f'{size} = [...]' for size in missing)} to its table "
                                    f"(it has values for {', '.join(values)} px)")

    def sweep_at(self, name: str, size: int) -> dict[str, list[Any]]:
        """{parameter: [values]} of ``sweep.NAME`` at ``size`` px (a size without values: UserError)."""
        self.check_sizes([size])
        return {param: list(values[str(size)] if isinstance(values, dict) else values)
                for param, values in self.sweep[name].items()}

    def records_time(self) -> bool:
        return True  # every point of the curve is timed (time-to-quality)

    def calibrations(self) -> tuple[str, ...]:
        """Only the matmul yardstick of the feasibility check, when asked for (no achieved rates here)."""
        return ("flops_per_s",) if self.time_margin is not None else ()


OPTIONS = SearchOptions


# ---------------------------------------------------------------------------------- frames
def load_image(path: str, size: Optional[int] = None) -> torch.Tensor:
    """An image file as (1, 3, H, W) float32 RGB in [0, 1], optionally centre-cropped and resized."""
    image = read_image(path, size)  # decoded reduced where it can be; never upscaled
    return to_tensor([image if size is None else square_resize(image, size)])


def load_frames(options: dict[str, Any], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries, keys) as (1, 3, size, size): the first pair of ``options['data']`` (``--data``)
    or the embedded stereo pair; ``query_frame = "b"`` searches frame B's patches in frame A."""
    if options.get("data"):
        pair = user_pairs(options["data"], 1, size=size)[0]
    elif options.get("require_data"):
        raise UserError("this preset measures your own pair: pass --data DIR (a folder with NAME_a/NAME_b "
                        "images or one sub-folder of two images)")
    else:
        pair = stereo_pair()
    a, b = square_resize(pair.a, size), square_resize(pair.b, size)
    frame = options.get("query_frame", "a")
    if frame not in ("a", "b"):
        raise UserError(f"search: query_frame must be \"a\" or \"b\", got {frame!r}")
    return (to_tensor([a]), to_tensor([b])) if frame == "a" else (to_tensor([b]), to_tensor([a]))


# --------------------------------------------------------------------------------- measures
def _row_patches(padded: torch.Tensor, y: int, patch_size: int) -> torch.Tensor:
    """(W, d) query patches of row y of a replicate-padded (1, C, H + 2r, W + 2r) image."""
    return F.unfold(padded[:, :, y : y + patch_size], patch_size)[0].T


def exact_matches(q: torch.Tensor, k: torch.Tensor, rows: Sequence[int], patch_size: int, dot: bool = False,
                  valid_grid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Valid-grid index (rows, Wq) of the exact best key patch of every query on ``rows`` (brute force).

    ``valid_grid`` (n_grid,) bool: keys that may be matched (a hole excluded); all when None."""
    r = patch_size // 2
    keys = F.unfold(k, patch_size)[0]  # (d, n_grid)
    bias = torch.zeros_like(keys[0]) if dot else -(keys * keys).sum(0)
    if valid_grid is not None:
        bias = torch.where(valid_grid, bias, torch.full_like(bias, -torch.inf))
    padded = F.pad(q, (r, r, r, r), mode="replicate")
    best = [torch.addmm(bias, _row_patches(padded, y, patch_size), keys, alpha=1.0 if dot else 2.0).argmax(1)
            for y in rows]
    return torch.stack(best)


def patch_cost(q: torch.Tensor, k: torch.Tensor, rows: Sequence[int], index: torch.Tensor, patch_size: int,
               dot: bool = False) -> torch.Tensor:
    """(rows, Wq) cost of each query's match ``index`` (valid-grid): ||q - k||^2, or -(q . k) for dot."""
    r = patch_size // 2
    keys = F.unfold(k, patch_size)[0]
    padded = F.pad(q, (r, r, r, r), mode="replicate")
    out = []
    for i, y in enumerate(rows):
        patches = _row_patches(padded, y, patch_size).T  # (d, W)
        matched = keys[:, index[i]]
        out.append(-(patches * matched).sum(0) if dot else ((patches - matched) ** 2).sum(0))
    return torch.stack(out)


def cached_exact_matches(q: torch.Tensor, k: torch.Tensor, rows: Sequence[int], patch_size: int) -> tuple[torch.Tensor, float]:
    """:func:`exact_matches` and the seconds it took, cached in the temp folder by a hash of the
    inputs: every cell of a size searches the same frames (brute force is minutes at 512 px)."""
    digest = hashlib.sha1()
    for t in (q, k, torch.tensor(list(rows)), torch.tensor([patch_size])):
        digest.update(t.contiguous().numpy().tobytes())
    path = Path(tempfile.gettempdir()) / f"attnbench-exact-{digest.hexdigest()[:20]}.pt"
    if path.exists():
        try:
            cached = torch.load(path)
            return cached["index"], float(cached["seconds"])
        except Exception:  # a partial file from a killed cell: search again
            pass
    t0 = time.perf_counter()
    index = exact_matches(q, k, rows, patch_size)
    seconds = time.perf_counter() - t0
    partial = path.with_suffix(f".{time.time_ns()}.tmp")
    torch.save({"index": index, "seconds": seconds}, partial)
    partial.replace(path)  # atomic: concurrent cells never read half a file
    return index, seconds


def recall(cost: torch.Tensor, exact_cost: torch.Tensor) -> float:
    """Share of queries whose match is as good as the exact best (ties count)."""
    tolerance = TIE_TOLERANCE * exact_cost.abs().clamp(min=1.0)
    return float((cost <= exact_cost + tolerance).double().mean())


def distance_ratio(cost: torch.Tensor, exact_cost: torch.Tensor) -> float:
    """Mean cost over the exact mean (l2: >= 1, 1 = exact); for dot costs (negative) S_exact / S."""
    ratio = float(cost.double().mean() / exact_cost.double().mean())
    return 1.0 / ratio if float(exact_cost.double().mean()) < 0 else ratio


def grid_index(flat: torch.Tensor, key_w: int, patch_size: int) -> torch.Tensor:
    """Flat key-image indices of key centres -> valid-grid indices."""
    r = patch_size // 2
    return (flat // key_w - r) * (key_w - 2 * r) + flat % key_w - r


def reconstruction_mse(out: torch.Tensor, target: torch.Tensor, patch_size: int) -> float:
    """MSE over query centres whose whole patch is inside the image (border queries excluded)."""
    r = patch_size // 2
    h, w = target.shape[-2:]
    return float(((out - target)[..., r : h - r, r : w - r] ** 2).mean())


# ------------------------------------------------------------------------------ cell runner
def _sweep(spec: CellSpec, base_params: dict[str, Any],
           options: Optional[SearchOptions] = None) -> tuple[str, list[dict[str, Any]]]:
    """The parameters varied along the curve (``"nprobe"``, or ``"nlist,nprobe"`` for several) and
    the points, each a {parameter: value} dict: the suite's ``sweep.<name> = {param = [...], ...}``
    for this mechanism name (without its [params]) at the cell's size (several parameters: every
    combination, so an index is tuned on all its main knobs), else ``iterations`` when it has one.
    ``options``: the cell's parsed options, when the caller has them (parsing checks every sweep value)."""
    options = options or SearchOptions.of(spec)
    name_only = spec.mechanism.split("[")[0]
    if name_only in options.sweep:
        knobs = options.sweep_at(name_only, spec.size)
        points = [dict(zip(knobs, combo)) for combo in itertools.product(*knobs.values())]
        return ",".join(knobs), points
    target = base_params.get("iterations")
    if target is None:
        return "", [{}]
    return "iterations", [{"iterations": n} for n in sorted(set(options.iterations) | {target})]


@dataclass(frozen=True)
class _Search:
    """A cell's frames and the exact search: every mechanism's matches are scored against it."""

    q: torch.Tensor
    k: torch.Tensor
    #: the key frame's RGB + each key centre's coordinates, so the output says where each match lies
    values: torch.Tensor
    rows: list[int]
    cols: slice
    target: torch.Tensor
    patch_size: int
    grid_w: int
    exact_mse: float
    exact_cost: torch.Tensor


def _exact_search(spec: CellSpec) -> tuple[_Search, dict[str, Any]]:
    """The frames, the rows scored (every ``row_step``-th above ``all_rows_up_to``) and the exact
    matches on them; with the metrics they give (exact_mse, exact_time_s, rows_sampled, row_step)."""
    opts = spec.options
    p, r = spec.patch_size, spec.patch_size // 2
    q, k = load_frames(opts, spec.size)
    size = spec.size
    step = int(opts.get("row_step", 1)) if size > int(opts.get("all_rows_up_to", 256)) else 1
    rows = list(range(r, size - r, step))
    cols = slice(r, size - r)
    grid_w = size - p + 1

    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    values = torch.cat([k, ys[None, None], xs[None, None]], 1)  # RGB + the key centre's coordinates
    target = q[0][:, rows][:, :, cols]

    exact, exact_time = cached_exact_matches(q, k, rows, p)
    ey, ex = exact // grid_w + r, exact % grid_w + r
    exact_mse = float(((k[0][:, ey, ex][:, :, cols] - target) ** 2).mean())
    exact_cost = patch_cost(q, k, rows, exact, p)[:, cols]
    search = _Search(q, k, values, rows, cols, target, p, grid_w, exact_mse, exact_cost)
    return search, {"exact_mse": exact_mse, "exact_time_s": exact_time, "rows_sampled": len(rows),
                    "row_step": step, "convergence": []}


def _score(search: _Search, module: Any, metrics: dict[str, Any], options: SearchOptions) -> dict[str, Any]:
    """Timed calls of ``module`` (index build included; the cell warmed up the libraries on a small
    input, so every full-size call is a sample) and the last call's matches scored against the exact
    search: mse, mse_ratio, recall, distance_ratio, time_s (median), time_iqr_s, time_samples_s."""
    s, r = search, search.patch_size // 2
    outputs: list[torch.Tensor] = []

    def call() -> None:
        outputs[:] = [module(s.q, s.k, s.values)]  # the previous call's output is freed here

    with oom_as_outcome(metrics), torch.no_grad():
        timing = time_call(call, s.q.device, min_run_time=options.min_run_time, budget_s=options.time_budget_s,
                           min_repeats=options.min_repeats, warmup=lambda: None)
        full_out = outputs[0]
        check_output(full_out, (1, s.values.shape[1], s.q.shape[2], s.q.shape[3]), s.q.dtype, s.q.device)
    out = full_out[0]
    recon = out[:3][:, s.rows][:, :, s.cols]
    my = out[3][s.rows].round().long() - r
    mx = out[4][s.rows].round().long() - r
    index = my.clamp(0, s.grid_w - 1) * s.grid_w + mx.clamp(0, s.grid_w - 1)
    cost = patch_cost(s.q, s.k, s.rows, index, s.patch_size)[:, s.cols]
    mse = float(((recon - s.target) ** 2).mean())
    return {
        "mse": mse,
        "mse_ratio": mse / s.exact_mse if s.exact_mse > 0 else float("nan"),
        "recall": recall(cost, s.exact_cost),
        "distance_ratio": distance_ratio(cost, s.exact_cost),
        "time_s": timing.median_s,
        "time_iqr_s": timing.iqr_s,
        "time_samples_s": timing.samples_s,
    }


def run(spec: CellSpec) -> dict[str, Any]:
    """A search cell: each sweep point scored against the exact search; the spec's own point (else the
    sweep's last) gives the cell's headline metrics."""
    options = SearchOptions.of(spec)
    search, metrics = _exact_search(spec)
    q, k, values, p = search.q, search.k, search.values, search.patch_size
    base = mechanism(spec.mechanism, patch_size=p, default_seed=spec.seed, **spec.params)
    metrics["resolved_params"] = base.params()  # defaults included (search_k, seed, backend...)
    # the same estimate, feasibility rule, output check and OOM mapping as every other suite
    # (measure/call.py); the time axis is the wall-clock call, index build included
    shape = ProblemShape.of(q, k, values, p)
    metrics.update(estimate_metrics(base, shape))
    check_feasible(base, shape, CallBudget.for_cell(spec, options, {"time"}), metrics)
    with torch.no_grad():  # untimed warm-up: library loading, thread pools, compilation
        base(q[..., :32, :32], k[..., :32, :32], values[..., :32, :32])
    swept, points = _sweep(spec, metrics["resolved_params"], options)
    if swept:
        metrics["swept"] = swept
    own = {name: metrics["resolved_params"].get(name) for name in swept.split(",")} if swept else {}
    for extra in points:
        module = base if not extra else mechanism(spec.mechanism, patch_size=p, default_seed=spec.seed,
                                                  **{**spec.params, **extra})
        point = {**extra, **_score(search, module, metrics, options)}
        metrics["convergence"].append(point)
        if extra == own:
            metrics.update({key: point[key] for key in HEADLINE})
    if "mse" not in metrics and metrics["convergence"]:  # the spec's own value is not on the sweep
        metrics.update({key: metrics["convergence"][-1][key] for key in HEADLINE})
    return metrics
