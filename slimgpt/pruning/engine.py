"""The one layer-wise pruning engine (every method runs through it).

Per decoder layer, in this order (docs/method.md#the-layer-loop): statistics of ``o_proj``'s input, heads
pruned (OBS-compensated ``o_proj``, q/k/v rows deleted); statistics of ``down_proj``'s input *with the pruned
attention*, channels pruned (gate/up rows deleted); the pruned layer's outputs are the next layer's inputs,
so errors propagate as in the paper. Two loops compute this (``EngineOptions.passes``): one pass
(:func:`prune_layer_one_pass`) computes attention and gate/up once and keeps ``o_proj``'s and ``down_proj``'s
inputs, three passes (:func:`prune_layer_recompute`) recompute them instead; they choose the same units. Inputs
of layer 0 are captured once; only the current layer lives on the compute device (layer offload); the layer
outputs overwrite the input buffer in place.
"""

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..modeling import SlimGPTForCausalLM
from .balanced import check_balanced, group_sizes, slots_to_free
from .methods import Method, make_method
from .options import EngineOptions, check_ratio
from .report import LayerReport, PruneReport
from .schedules import Schedule, layer_ratios
from .stats import InputStats
from .structures import (
    Block,
    add_output_biases,
    attention_block,
    channel_params,
    count_params,
    guaranteed_head_params,
    layer_prunable_params,
    mlp_block,
    remove_channels,
    remove_heads,
    removed_heads_of,
)

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is skipped."""


#: one calibration batch as the model passes it to its layers: the rows of the input buffer it covers and
#: the keyword arguments of the layer call (position embeddings, attention mask, ...)
Batch = tuple[slice, dict]


def prune(
    model: SlimGPTForCausalLM,
    calibration: torch.Tensor,
    ratio: float,
    schedule: str | Schedule = "log_increase",
    method: str | Method = "slimgpt",
    ratio_of: str = "total",
    first_ratio: float | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    **options,
) -> PruneReport:
    """Prunes ``model`` in place to remove ``ratio`` of its parameters (the keyword form of :func:`prune_model`).

    Args:
        model: a ``SlimGPTForCausalLM`` (``slimgpt.load_model`` or ``slimgpt.as_slim`` give one).
        calibration: ``LongTensor[num_samples, seq_len]`` token ids (``slimgpt.calibration_data``).
        ratio: fraction of the parameters to remove, in [0, 1): of the model's *total* parameters (embeddings
            count, though never pruned; ``ratio_of="total"``, the paper's convention) or of the prunable
            parameters of the pruned layers (``ratio_of="layers"``).
        schedule: a :class:`~slimgpt.pruning.schedules.Schedule` or a schedule name (``SCHEDULES``);
            ``first_ratio`` sets the ratio of its least-pruned layer.
        method: a method object or a method name (``slimgpt.pruning.METHODS``).
        checkpoint_dir: resume from / checkpoint into this folder (see :func:`prune_model`).
        options: the fields of :class:`~slimgpt.pruning.options.EngineOptions` (``head_granularity``,
            ``layer_range``, ``batch_size``, ``device``, ``progress``, ``track_error``, ``passes``,
            ``buffers``, ...); every other option is a field of the method's dataclass (e.g. ``damp`` for
            ``slimgpt``).
    Returns:
        a :class:`PruneReport`. All arguments are checked before any weight changes.
    """
    schedule, method, engine = typed_arguments(schedule, method, first_ratio, options)
    return prune_model(model, calibration, ratio, schedule, method, engine, ratio_of, checkpoint_dir)


def typed_arguments(
    schedule: str | Schedule, method: str | Method, first_ratio: float | None, options: dict
) -> tuple[Schedule, Method, EngineOptions]:
    """The typed schedule, method and engine options of :func:`prune`'s keyword form (``options`` holds the
    engine's and the method's options together; one clear error for an unknown one)."""
    options = dict(options)
    engine = EngineOptions(**{k: options.pop(k) for k in list(options) if k in EngineOptions.names()})
    if isinstance(method, str):
        method = make_method(method, options)
    elif options:
        raise ValueError(f"unknown engine option(s) {', '.join(sorted(options))}; "
                         f"engine options are: {', '.join(EngineOptions.names())}")
    if not isinstance(schedule, Schedule):
        schedule = Schedule(schedule, first_ratio)
    elif first_ratio is not None:
        raise ValueError("give first_ratio inside the Schedule object, not next to it")
    return schedule, method, engine


def prune_model(
    model: SlimGPTForCausalLM,
    calibration: torch.Tensor,
    ratio: float,
    schedule: Schedule,
    method: Method,
    engine: EngineOptions,
    ratio_of: str = "total",
    checkpoint_dir: str | os.PathLike | None = None,
    store: "LayerStore | None" = None,
) -> PruneReport:
    """The layer loop: prunes ``model`` in place with typed options (see :func:`prune` for the arguments).

    Args:
        checkpoint_dir: a folder for a per-layer checkpoint (``slimgpt.pruning.checkpoint``): after each layer
            the pruned layer, the input buffer(s) and the reports so far are written there; a call with the same
            arguments and the same folder resumes after the last finished layer, with bit-identical weights, and a
            finished prune removes the folder. A checkpoint made with other arguments is refused (``ValueError``).
        store: where the loop gets each decoder layer and what it does with a pruned one (:class:`LayerStore`);
            default: the layers of ``model`` in memory (streaming passes its own).
    """
    check_inputs(model, calibration, ratio, ratio_of)
    method.check_engine(engine)
    if model.config.is_pruned():
        log.warning("this model was pruned before (per-layer widths differ); pruning it again removes "
                    "%s of its *current* parameters", f"{ratio:.1%}")
    pruner = method
    layers = model.model.layers
    weights = [layer_prunable_params(layer) for layer in layers]
    params_before = count_params(model)
    if pruner.plans_widths:  # its plan replaces the schedule's ratios (placeholders until then; not checked)
        ratios = plan_ratios(ratio, ratio_of, params_before, weights, Schedule("uniform"), engine.layer_range)
    else:
        ratios = plan_ratios(ratio, ratio_of, params_before, weights, schedule, engine.layer_range)
        check_feasible(model, ratios, engine)
    if pruner.adds_bias:
        add_output_biases(model)
    device = torch.device(engine.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    store = store if store is not None else LayerStore(model)
    with _exact_fp32():
        pruner.prepare(model, calibration)
        ratios, counts = method_plan(pruner, model, ratio, ratio_of, params_before, ratios, engine)
        inps, batches = capture_inputs(model, calibration, engine.batch_size, device)
        capture_seconds = time.perf_counter() - start
        dense_inps = inps.clone() if engine.track_error else None
        buffers = plan_buffers(engine.passes, pruner, inps, layers, device, engine.buffers, engine.buffer_dir)
        if checkpoint_dir is not None:
            from .checkpoint import Checkpointed, fingerprint

            store = Checkpointed(store, checkpoint_dir, fingerprint(
                store, calibration, ratio, ratio_of, schedule, pruner, engine, device, ratios, counts,
                buffers is not None, inps.dtype))
        loop = LoopState(inps, dense_inps, started=start)
        run_layers(store, loop, ratios, counts, batches, pruner, engine, device, buffers,
                   desc=f"{pruner.name} {ratio:.0%}")
    sync_config(model)
    peak, kind = _peak_memory(device)
    return PruneReport(
        method=pruner.name, schedule=schedule.name if counts is None else f"planned by {pruner.name}",
        first_ratio=schedule.first_ratio, ratio=ratio,
        ratio_of=ratio_of, params_before=params_before, params_after=count_params(model),
        prunable_before=sum(weights), prunable_after=sum(layer_prunable_params(layer) for layer in layers),
        layers=loop.reports, seconds=loop.elapsed(), capture_seconds=capture_seconds,
        peak_memory_bytes=peak, peak_memory_kind=kind, calibration_shape=tuple(calibration.shape),
        engine=dataclasses.asdict(engine), method_options=pruner.options(),
        passes="three" if buffers is None and pruner.needs_inputs else "one",
        buffer_device=None if buffers is None else str(buffers),
    )


@dataclasses.dataclass
class LoopState:
    """What the layer loop carries from one layer to the next.

    inps: ``[num_samples, seq_len, hidden]`` the next layer's inputs (model dtype, on the compute device).
    dense_inps: the same for the dense model (``track_error``), or None.
    reports: one :class:`LayerReport` per finished layer, in order (its length is the next layer's index).
    started: ``time.perf_counter()`` when this process started the prune; ``seconds_before``: seconds spent on
        it by earlier processes (a resumed prune).
    """

    inps: torch.Tensor
    dense_inps: torch.Tensor | None
    reports: list[LayerReport] = dataclasses.field(default_factory=list)
    started: float = 0.0
    seconds_before: float = 0.0

    def elapsed(self) -> float:
        """Seconds spent on this prune, earlier processes included."""
        return self.seconds_before + time.perf_counter() - self.started


class LayerStore:
    """Where the layer loop gets decoder layer ``i`` and what becomes of it once pruned: the one seam through
    which resuming (``slimgpt.pruning.checkpoint``) and streaming (``slimgpt.pruning.streaming``) plug into
    the one loop (:func:`run_layers`).

    The loop calls ``first = resume(loop)``; then, for ``i = first .. n-1``, ``layer = load(i)``, prunes it
    in place (:func:`prune_layer`, which advances ``loop.inps``) and calls ``done(i, layer, loop)``; at the end,
    ``finish(completed)`` (also when a layer raised: ``completed=False``). This base class is the model in
    memory: ``load`` returns the model's own layer and the other steps do nothing. ``sample()`` identifies the
    dense weights for a checkpoint's fingerprint.
    """

    def __init__(self, model: SlimGPTForCausalLM):
        self.model = model

    def resume(self, loop: LoopState) -> int:
        """Restores what earlier runs finished into ``loop`` (and the model); returns the first layer to prune."""
        return 0

    def load(self, index: int) -> nn.Module:
        """Decoder layer ``index``, dense, on its home device."""
        return self.model.model.layers[index]

    def done(self, index: int, layer: nn.Module, loop: LoopState) -> None:
        """Called once layer ``index`` is pruned and ``loop.inps`` holds its outputs."""

    def finish(self, completed: bool) -> None:
        """Called when the loop ends: ``completed`` when every layer is done, False when it was interrupted."""

    def sample(self) -> str:
        """sha256 of every dense parameter's name, shape, dtype and first 1024 values (cheap; what a checkpoint
        checks to tell one model from another with the same config)."""
        from .checkpoint import SAMPLE, sample_hash

        return sample_hash((name, p, p.reshape(-1)[:SAMPLE]) for name, p in self.model.named_parameters())


def run_layers(
    store: LayerStore,
    loop: LoopState,
    ratios: list[float],
    counts: list[tuple[int, int]] | None,
    batches: list[Batch],
    pruner: Method,
    engine: EngineOptions,
    device: torch.device,
    buffers: "torch.device | DiskBuffers | None",
    desc: str = "",
) -> None:
    """The loop over decoder layers: each layer loaded from ``store``, pruned (:func:`prune_layer`), handed back;
    ``loop`` collects the reports and carries the input buffers."""
    completed = False
    try:
        first = store.resume(loop)
        steps = tqdm(range(first, len(ratios)), desc=desc, disable=not engine.progress, initial=first,
                     total=len(ratios))
        for i in steps:
            layer = store.load(i)
            loop.reports.append(prune_layer(layer, i, ratios[i], loop.inps, batches, pruner, engine, device,
                                            loop.dense_inps, None if counts is None else counts[i], buffers))
            store.done(i, layer, loop)
        completed = True
    finally:
        store.finish(completed)


def activation_bytes(inps: torch.Tensor, layers: nn.ModuleList) -> int:
    """Bytes of the one-pass loop's activation buffers for the widest layer: ``o_proj``'s and ``down_proj``'s
    inputs over all calibration tokens, ``n · L · (heads · head_dim + ffn)`` values in the model dtype."""
    width = max(layer.self_attn.o_proj.in_features + layer.mlp.down_proj.in_features for layer in layers)
    return inps.shape[0] * inps.shape[1] * width * inps.element_size()


@dataclasses.dataclass(frozen=True)
class DiskBuffers:
    """The disk tier of the one-pass buffers: each buffer is a file-backed tensor (``torch.from_file``) in a fresh
    file under ``folder``, unlinked as soon as it is mapped, so its disk space goes when the tensor does (at the end
    of each layer, or when the process dies)."""

    folder: str

    def __str__(self) -> str:
        return f"disk:{self.folder}"

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised ``shape`` tensor of ``dtype`` backed by a new, already unlinked, file."""
        os.makedirs(self.folder, exist_ok=True)
        handle, path = tempfile.mkstemp(prefix=".buffer-", dir=self.folder)
        os.close(handle)
        try:
            flat = torch.from_file(path, shared=True, size=math.prod(shape), dtype=dtype)
        finally:
            os.unlink(path)
        return flat.view(shape)


def empty_buffer(shape: tuple[int, ...], dtype: torch.dtype, place: "torch.device | DiskBuffers") -> torch.Tensor:
    """An uninitialised activation buffer on a device or on disk (:func:`plan_buffers`)."""
    if isinstance(place, DiskBuffers):
        return place.empty(shape, dtype)
    return torch.empty(shape, dtype=dtype, device=place)


def plan_buffers(
    passes: str,
    pruner: Method,
    inps: torch.Tensor,
    layers: nn.ModuleList,
    device: torch.device,
    buffers: str = "auto",
    buffer_dir: str | None = None,
) -> "torch.device | DiskBuffers | None":
    """Where the one-pass loop keeps its activation buffers (:func:`activation_bytes`, ``need`` bytes), or None for
    three passes.

    ``buffers="auto"`` tries, in this order: the compute device when ``need`` is at most half of its free memory
    (CUDA's free memory; on a CPU the host's ``MemAvailable``); host memory when ``need`` is at most half of the
    host's available memory; disk (:class:`DiskBuffers` in ``buffer_dir``, default the system temporary folder)
    when ``need`` is at most half of that file system's free space. When none fits, ``passes="auto"`` runs three
    passes (recomputation, no buffers) and ``passes="one"`` keeps them in host memory anyway. ``buffers="device"``,
    ``"host"`` or ``"disk"`` forces the place whatever the sizes. ``passes="three"``, and a method that needs no
    inputs (one pass of the pruned layer either way): None.
    """
    if passes == "three" or not pruner.needs_inputs:
        return None
    host = torch.device("cpu")
    disk = DiskBuffers(buffer_dir or tempfile.gettempdir())
    if buffers != "auto":
        return {"device": device, "host": host, "disk": disk}[buffers]
    need = activation_bytes(inps, layers)
    for place in (device, host, disk):
        if need <= _free_bytes(place) // 2:
            return place
    if passes == "one":
        return host
    log.info("one-pass buffers need %.1f GiB, more than half the free memory and disk: three passes per layer",
             need / 2**30)
    return None


def _free_bytes(place: "torch.device | DiskBuffers") -> int:
    """Free room at ``place``: CUDA's free memory, the host's available memory (``MemAvailable``), or the free
    space of the disk buffers' file system."""
    if isinstance(place, DiskBuffers):
        folder = place.folder
        while not os.path.isdir(folder):  # not created yet: its nearest existing parent's file system
            folder = os.path.dirname(folder) or "."
        return shutil.disk_usage(folder).free
    if place.type == "cuda":
        return torch.cuda.mem_get_info(place)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def method_plan(
    pruner: Method,
    model: SlimGPTForCausalLM,
    ratio: float,
    ratio_of: str,
    params_before: int,
    ratios: list[float],
    engine: EngineOptions,
) -> tuple[list[float], list[tuple[int, int]] | None]:
    """The per-layer ratios and, for a method that plans every layer's width itself (``Method.plan``, FLAP's
    global search), its per-layer ``(attention units, FFN channels)`` to remove, which replace the schedule's.

    Returns:
        ``(ratios, None)`` unchanged when the method does not plan; otherwise each layer's planned ratio (what
        the report lists as its target) and the counts.
    """
    layers = model.model.layers
    start, end = engine.layer_range if engine.layer_range is not None else (0, len(layers))
    base = params_before if ratio_of == "total" else sum(layer_prunable_params(layer) for layer in layers[start:end])
    counts = pruner.plan(model, params_before - ratio * base, engine.head_granularity, engine.layer_range)
    if counts is None:
        return ratios, None
    planned = []
    for layer, (units, channels) in zip(layers, counts):
        freed = guaranteed_head_params(layer.self_attn, engine.head_granularity, units)
        planned.append((freed + channels * channel_params(layer.mlp)) / layer_prunable_params(layer))
    return planned, counts


def check_inputs(model, calibration: torch.Tensor, ratio: float, ratio_of: str) -> None:
    """One clear error for each kind of bad input (before any weight changes)."""
    if not isinstance(model, SlimGPTForCausalLM):
        raise TypeError(
            f"prune needs a SlimGPTForCausalLM, got {type(model).__name__}: convert it with slimgpt.as_slim(model) "
            "(shares weights) or load it with slimgpt.load_model"
        )
    check_ratio(ratio, ratio_of)
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.dtype != torch.long:
        got = getattr(calibration, "shape", type(calibration).__name__)
        raise ValueError(f"calibration must be a LongTensor[num_samples, seq_len], got {got}")
    if calibration.numel() == 0:
        raise ValueError("calibration is empty")
    if calibration.shape[1] < 2:
        raise ValueError(f"calibration seq_len must be >= 2 (attention needs context), got {calibration.shape[1]}")
    context = model.config.max_position_embeddings
    if calibration.shape[1] > context:
        raise ValueError(f"calibration seq_len {calibration.shape[1]} exceeds the model's context {context}")
    if calibration.min() < 0 or calibration.max() >= model.config.vocab_size:
        raise ValueError(f"calibration token ids must be in [0, {model.config.vocab_size}), "
                         f"got [{int(calibration.min())}, {int(calibration.max())}]")


def plan_ratios(
    ratio: float,
    ratio_of: str,
    params_total: int,
    weights: list[int],
    schedule: Schedule,
    layer_range: tuple[int, int] | None,
) -> list[float]:
    """Per-layer ratios removing ``ratio`` of ``params_total`` (``ratio_of="total"``) or of the prunable
    parameters of the layers in ``layer_range`` (``"layers"``) from those layers (all by default).

    Args:
        weights: prunable parameter count of each decoder layer.
    """
    n = len(weights)
    start, end = layer_range if layer_range is not None else (0, n)
    if not 0 <= start < end <= n:
        raise ValueError(f"layer_range must be (start, end) with 0 <= start < end <= {n}, got {layer_range!r}")
    inside = weights[start:end]
    remove_params = ratio * (params_total if ratio_of == "total" else sum(inside))
    mean_ratio = remove_params / sum(inside)
    if mean_ratio >= 1:
        raise ValueError(f"removing {remove_params:,.0f} parameters exceeds every prunable parameter of layers "
                         f"{start}..{end - 1} ({sum(inside):,})")
    return [0.0] * start + layer_ratios(schedule, mean_ratio, inside) + [0.0] * (n - end)


def check_feasible(model: SlimGPTForCausalLM, ratios: list[float], engine: EngineOptions) -> None:
    """Refuses, up front, a plan that a layer cannot meet: more than every head but one and every FFN channel but
    the last (aligned) ones, counting only the attention parameters certainly freed (``guaranteed_head_params``)."""
    granularity = engine.head_granularity
    for i, (layer, r) in enumerate(zip(model.model.layers, ratios)):
        attn, mlp = layer.self_attn, layer.mlp
        units = attention_units(r, attention_block(attn, attn.kv_map, granularity), None)
        heads_freed = guaranteed_head_params(attn, granularity, units)
        channels_needed = round((r * layer_prunable_params(layer) - heads_freed) / channel_params(mlp))
        floor = engine.width_multiple if mlp.intermediate_size > engine.width_multiple else 1
        if channels_needed > mlp.intermediate_size - floor:
            most = (heads_freed + (mlp.intermediate_size - floor) * channel_params(mlp)) / layer_prunable_params(layer)
            raise ValueError(
                f"layer {i} would need a ratio of {r:.3f}, but with head_granularity={granularity} at most "
                f"{most:.3f} of it can surely be removed (one head and {floor} FFN channel(s) stay); lower the "
                "ratio or use a flatter schedule"
            )


def ffn_channels_to_remove(budget: float, width: int, per_channel: int, multiple: int = 1) -> int:
    """FFN channels to remove so that ``budget`` parameters go (``per_channel`` each), rounded to the nearest
    count that leaves the layer's width a multiple of ``multiple`` (at least ``multiple`` channels, or one
    when the width is below it); never negative. ``multiple=1`` is the paper's nearest whole channel."""
    remove = max(round(budget / per_channel), 0)
    if remove == 0 or multiple <= 1 or width <= multiple:
        return min(remove, width - 1)
    keep = max(multiple * round((width - remove) / multiple), multiple)
    return max(width - keep, 0) if keep <= width else 0


def head_units(ratio: float, units: int) -> int:
    """Attention units removed from a layer at ``ratio``: rounded to whole units, at least one kept."""
    return min(round(ratio * units), units - 1)


@contextlib.contextmanager
def _exact_fp32():
    """TF32 off while pruning (fp32 statistics mean fp32)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(b, min(b + batch_size, n)) for b in range(0, n, batch_size)]


@torch.no_grad()
def capture_inputs(
    model: SlimGPTForCausalLM, calibration: torch.Tensor, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, list[Batch]]:
    """Runs the calibration set up to decoder layer 0 and returns what it receives.

    Returns:
        ``inps: [num_samples, seq_len, hidden]`` (model dtype, on ``device``) and the batches: each one's
        rows of ``inps`` with the keyword arguments the model passes to its layers (position embeddings,
        mask, ...). Every later forward replays exactly these batches (a mask is shaped for its batch).
    """
    base = model.model
    parts = [base.embed_tokens, base.rotary_emb, base.layers[0]]
    homes = [_device_of(p) for p in parts]
    for part in parts:
        part.to(device)
    captured: list[tuple[torch.Tensor, dict]] = []

    def catch(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _StopForward

    handle = base.layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        rows = _batches(calibration.shape[0], batch_size)
        for batch in rows:
            with contextlib.suppress(_StopForward):
                model(calibration[batch].to(device), use_cache=False)
    finally:
        handle.remove()
        for part, home in zip(parts, homes):
            part.to(home)
    inps = torch.cat([hidden for hidden, _ in captured])
    if not torch.isfinite(inps).all():
        raise FloatingPointError("non-finite (NaN/inf) embeddings for the calibration data")
    return inps, [(batch, kwargs) for batch, (_, kwargs) in zip(rows, captured)]


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    tensor = tensor if tensor is not None else next(iter(module.buffers()))
    return tensor.device


def _input_of(target: nn.Module, run: Callable[[], object]) -> torch.Tensor:
    """Calls ``run()`` until it reaches ``target`` and returns ``target``'s input (the rest is not computed)."""
    got = []

    def hook(module, args):
        got.append(args[0])
        raise _StopForward

    handle = target.register_forward_pre_hook(hook)
    try:
        with contextlib.suppress(_StopForward):
            run()
    finally:
        handle.remove()
    if not got:
        raise RuntimeError(f"the forward pass never reached {type(target).__name__}")
    return got[0]


@torch.no_grad()
def collect(layer: nn.Module, target: nn.Linear, stats: InputStats, inps: torch.Tensor, batches: list[Batch]):
    """Accumulates ``stats`` of ``target``'s input over all samples; the forward stops at ``target``."""
    for batch, kwargs in batches:
        stats.add_batch(_input_of(target, lambda: layer(inps[batch], **kwargs)))


@torch.no_grad()
def forward_layer(layer: nn.Module, inps: torch.Tensor, batches: list[Batch]) -> None:
    """Replaces ``inps`` by the layer's outputs, batch by batch (in place: the next layer's inputs)."""
    for batch, kwargs in batches:
        inps[batch] = layer(inps[batch], **kwargs)


class _Clock:
    """Seconds per phase of one layer (``statistics``, ``selection``, ``output``; LayerReport's fields)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = {"statistics": 0.0, "selection": 0.0, "output": 0.0}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[phase] += time.perf_counter() - start


def _new_stats(block: Block, pruner: Method, device: torch.device) -> InputStats:
    return InputStats(block.out_proj.in_features, device, hessian=pruner.needs_hessian)


@torch.no_grad()
def choose_units(block: Block, stats: InputStats | None, num_remove: int, pruner: Method) -> tuple[list[int], dict]:
    """The method's choice → (compensated) ``out_proj`` weight and bias. Returns removed units, info."""
    selection = pruner.select(block, stats, num_remove)
    if block.groups is not None:
        try:
            check_balanced(block.groups, list(selection.removed), num_remove)
        except ValueError as err:
            raise RuntimeError(f"method '{pruner.name}' ignored head_granularity=balanced_query_head in layer "
                               f"{block.layer}: {err}") from None
    out = block.out_proj
    if selection.weight is not None:
        out.weight.copy_(selection.weight.to(out.weight.dtype))
    if selection.bias is not None:
        if out.bias is None:
            raise TypeError(f"method '{pruner.name}' returns a bias but does not set adds_bias = True")
        out.bias.copy_(selection.bias.to(out.bias.dtype))
    return list(selection.removed), dict(selection.info, removed=len(selection.removed))


def prune_block(
    layer: nn.Module,
    block: Block,
    num_remove: int,
    inps: torch.Tensor,
    batches: list[Batch],
    pruner: Method,
    clock: _Clock | None = None,
) -> tuple[list[int], dict]:
    """Statistics (a forward up to ``out_proj``) → the method's choice → (compensated) ``out_proj`` weights.
    Returns removed units, info."""
    if num_remove == 0:
        return [], {}
    clock = clock or _Clock(inps.device)
    stats = None
    if pruner.needs_inputs:
        stats = _new_stats(block, pruner, inps.device)
        with clock("statistics"):
            collect(layer, block.out_proj, stats, inps, batches)
    with clock("selection"):
        return choose_units(block, stats, num_remove, pruner)


def ffn_channels(layer: nn.Module, ratio: float, params: int, engine: EngineOptions,
                 counts: tuple[int, int | None] | None) -> int:
    """FFN channels to remove: the method's planned count if any, else so that the layer (``params`` prunable
    parameters before its heads were pruned) loses ``ratio`` of them: whatever the heads did not take
    (:func:`ffn_channels_to_remove`)."""
    if counts is not None and counts[1] is not None:
        return counts[1]
    mlp = layer.mlp
    budget = ratio * params - (params - layer_prunable_params(layer))
    return ffn_channels_to_remove(budget, mlp.intermediate_size, channel_params(mlp), engine.width_multiple)


def attention_units(ratio: float, block: Block, counts: tuple[int, int] | None) -> int:
    """Attention units to remove: the method's planned count if any, else :func:`head_units`; for a balanced
    query-head block the head slots to free (``balanced.slots_to_free``: query + kv heads, each one slot)."""
    if counts is not None:
        return counts[0]
    if block.groups is not None:
        return slots_to_free(ratio, group_sizes(block.groups))
    return head_units(ratio, block.num_units)


def _remove_heads(attn: nn.Module, kv_map: list[int], granularity: str, removed: list[int]) -> None:
    if removed:
        remove_heads(attn, kv_map, removed_heads_of(granularity, kv_map, removed))


def _remove_channels(mlp: nn.Module, removed: list[int]) -> None:
    if removed:
        remove_channels(mlp, removed)


def prune_layer_recompute(
    layer: nn.Module,
    index: int,
    ratio: float,
    inps: torch.Tensor,
    batches: list[Batch],
    pruner: Method,
    engine: EngineOptions,
    clock: _Clock,
    counts: tuple[int, int] | None = None,
) -> tuple[dict, dict]:
    """The three-pass layer: a forward up to ``o_proj`` (statistics), heads pruned; a forward of the pruned
    attention up to ``down_proj``, channels pruned; a forward of the pruned layer (the next layer's inputs).
    A method without inputs runs only the last one. Returns the attention and MLP infos."""
    attn, params = layer.self_attn, layer_prunable_params(layer)
    kv_map = list(attn.kv_map)
    block = attention_block(attn, kv_map, engine.head_granularity, index)
    removed, attn_info = prune_block(layer, block, attention_units(ratio, block, counts), inps, batches, pruner, clock)
    with clock("selection"):
        _remove_heads(attn, kv_map, engine.head_granularity, removed)
    num_channels = ffn_channels(layer, ratio, params, engine, counts)
    removed, mlp_info = prune_block(layer, mlp_block(layer.mlp, index), num_channels, inps, batches, pruner, clock)
    with clock("selection"):
        _remove_channels(layer.mlp, removed)
    with clock("output"):
        forward_layer(layer, inps, batches)
    return attn_info, mlp_info


@torch.no_grad()
def keep_inputs(
    target: nn.Linear,
    stats: InputStats | None,
    batches: list[Batch],
    run: Callable[[slice, dict], object],
    buffer_device: "torch.device | DiskBuffers",
) -> torch.Tensor:
    """Runs ``run(rows, kwargs)`` for every batch until it reaches ``target``, accumulates ``stats`` of
    ``target``'s input (if given) and keeps it.

    Returns:
        ``[num_samples, seq_len, target.in_features]`` in the input's dtype (the model's), on ``buffer_device``
        (a device, or disk: :class:`DiskBuffers`).
    """
    kept = None
    for rows, kwargs in batches:
        x = _input_of(target, lambda: run(rows, kwargs))  # [batch, seq_len, in_features]
        if stats is not None:
            stats.add_batch(x)
        if kept is None:
            kept = empty_buffer((batches[-1][0].stop, *x.shape[1:]), x.dtype, buffer_device)
        kept[rows] = x
    return kept


def _kept_columns(block: Block, removed: list[int]) -> torch.Tensor | None:
    """``[kept]`` ascending ``out_proj`` input columns left when ``removed`` units go (None: all are left)."""
    if not removed:
        return None
    keep = torch.ones(block.out_proj.in_features, dtype=torch.bool)
    keep[block.units[removed].flatten()] = False
    return keep.nonzero().flatten()


def _columns(kept: torch.Tensor, rows: slice, columns: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """``kept[rows][..., columns]`` on ``device`` (a kept activation, restricted to the columns left)."""
    x = kept[rows].to(device)
    if columns is None:
        return x
    flat = x.reshape(-1, x.shape[-1]).index_select(1, columns.to(device))  # 2-D: ~10× faster than on dim -1
    return flat.reshape(*x.shape[:-1], -1)


@torch.no_grad()
def prune_layer_one_pass(
    layer: nn.Module,
    index: int,
    ratio: float,
    inps: torch.Tensor,
    batches: list[Batch],
    pruner: Method,
    engine: EngineOptions,
    clock: _Clock,
    buffer_device: torch.device,
    counts: tuple[int, int] | None = None,
) -> tuple[dict, dict]:
    """The one-pass layer: every activation computed once (the decoder layer's own computation, split at its
    two ``out_proj``s):

        a = attention(input_layernorm(x))                     → kept: o_proj's input  [n, L, heads·head_dim]
        heads chosen; h = x + o_proj'(a[..., kept columns])    (o_proj' compensated, its columns sliced)
        z = act(gate(post_attention_layernorm(h))) · up(...)   → kept: down_proj's input [n, L, ffn]
        channels chosen; y = h + down_proj'(z[..., kept channels])

    A removed head does not change a kept head's attention output, nor a removed channel a kept channel's
    activation, so ``y`` is the pruned layer's output up to floating-point reassociation (same units as
    :func:`prune_layer_recompute`). ``h`` and then ``y`` overwrite ``inps``. Returns the attention and MLP infos.
    """
    attn, mlp, params, device = layer.self_attn, layer.mlp, layer_prunable_params(layer), inps.device
    kv_map = list(attn.kv_map)
    block = attention_block(attn, kv_map, engine.head_granularity, index)
    num_units = attention_units(ratio, block, counts)
    stats = _new_stats(block, pruner, device) if num_units else None
    with clock("statistics"):
        kept = keep_inputs(attn.o_proj, stats, batches, lambda rows, kwargs: layer(inps[rows], **kwargs),
                           buffer_device)
    removed, attn_info = [], {}
    with clock("selection"):
        if num_units:
            removed, attn_info = choose_units(block, stats, num_units, pruner)
        heads = _kept_columns(block, removed)
        _remove_heads(attn, kv_map, engine.head_granularity, removed)

    def attention_then_mlp(rows: slice, kwargs: dict):
        inps[rows] = inps[rows] + attn.o_proj(_columns(kept, rows, heads, device))  # h: the residual stream
        return mlp(layer.post_attention_layernorm(inps[rows]))

    block = mlp_block(mlp, index)
    num_channels = ffn_channels(layer, ratio, params, engine, counts)
    stats = _new_stats(block, pruner, device) if num_channels else None
    with clock("statistics"):
        kept = keep_inputs(mlp.down_proj, stats, batches, attention_then_mlp, buffer_device)
    removed, mlp_info = [], {}
    with clock("selection"):
        if num_channels:
            removed, mlp_info = choose_units(block, stats, num_channels, pruner)
        channels = _kept_columns(block, removed)
        _remove_channels(mlp, removed)
    with clock("output"):
        for rows, _ in batches:
            inps[rows] = inps[rows] + mlp.down_proj(_columns(kept, rows, channels, device))
    return attn_info, mlp_info


def prune_layer(
    layer: nn.Module,
    index: int,
    ratio: float,
    inps: torch.Tensor,
    batches: list[Batch],
    pruner: Method,
    engine: EngineOptions,
    device: torch.device,
    dense_inps: torch.Tensor | None = None,
    counts: tuple[int, int] | None = None,
    buffer_device: torch.device | None = None,
) -> LayerReport:
    """Prunes one decoder layer to remove ``ratio`` of its prunable parameters, then advances ``inps``.

    Heads are rounded to whole units (``round(ratio · units)``); the FFN then takes whatever part of the
    layer's parameter budget the heads did not, so the layer ratio is met to within one channel (within
    ``engine.width_multiple / 2`` channels when widths are aligned).
    ``dense_inps`` (optional): the dense model's inputs to this layer, advanced through the layer before it
    is pruned, to measure the output error against the dense model. ``counts`` (optional): the attention
    units and FFN channels to remove, planned by the method (``method_plan``) instead of derived from ``ratio``.
    ``buffer_device``: where the one-pass loop keeps the layer's activations (:func:`prune_layer_one_pass`);
    None: three passes (:func:`prune_layer_recompute`, also for a method that needs no inputs and for a layer
    left dense).
    """
    start = time.perf_counter()
    clock = _Clock(device)
    home = _device_of(layer)
    layer.to(device)
    if dense_inps is not None:
        forward_layer(layer, dense_inps, batches)
    ratio, units = pruner.layer_target(layer, index, ratio, inps, batches, engine)
    counts = counts if units is None else (units, None)
    attn, params = layer.self_attn, layer_prunable_params(layer)
    widths = (attn.num_heads, attn.num_kv_heads, layer.mlp.intermediate_size)
    if buffer_device is not None and pruner.needs_inputs and ratio > 0:
        attn_info, mlp_info = prune_layer_one_pass(layer, index, ratio, inps, batches, pruner, engine, clock,
                                                   buffer_device, counts)
    else:
        attn_info, mlp_info = prune_layer_recompute(layer, index, ratio, inps, batches, pruner, engine, clock,
                                                    counts)
    pruner.finish_layer(layer, index, inps)
    if not torch.isfinite(inps).all():
        raise FloatingPointError(f"non-finite (NaN/inf) outputs of pruned layer {index}")
    layer.to(home)
    attn = layer.self_attn
    error = None if dense_inps is None else relative_error(inps, dense_inps)
    phases = clock.seconds
    return LayerReport(
        layer=index, target_ratio=ratio, heads=(widths[0], attn.num_heads), kv_heads=(widths[1], attn.num_kv_heads),
        ffn=(widths[2], layer.mlp.intermediate_size), params=(params, layer_prunable_params(layer)),
        attention=attn_info, mlp=mlp_info, seconds=time.perf_counter() - start, stats_seconds=phases["statistics"],
        select_seconds=phases["selection"], output_seconds=phases["output"], output_error=error,
    )


def relative_error(y: torch.Tensor, y_ref: torch.Tensor) -> float:
    """``‖y - y_ref‖² / ‖y_ref‖²`` over all elements (fp32)."""
    return float((y.float() - y_ref.float()).pow(2).sum() / y_ref.float().pow(2).sum())


def sync_config(model: SlimGPTForCausalLM) -> None:
    """Writes the per-layer widths of the modules into the config (the modules are the truth)."""
    layers = model.model.layers
    config = model.config
    config.layer_num_heads = [layer.self_attn.num_heads for layer in layers]
    config.layer_num_key_value_heads = [layer.self_attn.num_kv_heads for layer in layers]
    config.layer_kv_map = [list(layer.self_attn.kv_map) for layer in layers]
    config.layer_intermediate_sizes = [layer.mlp.intermediate_size for layer in layers]
    config.validate_architecture()


def _peak_memory(device: torch.device) -> tuple[int, str]:
    from ..memory import peak_memory

    return peak_memory(device)
