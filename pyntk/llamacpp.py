"""llama.cpp's RoPE contract: how it reads a GGUF's rope settings, and the one mapping from a
:class:`RopeScaling` to the parameters it runs with, rendered for every way of handing them over.

Each rule cites the llama.cpp source that llama-cpp-python 0.3.36 bundles (``vendor/llama.cpp``);
``src/llama-model.cpp`` is abbreviated ``model.cpp``, ``src/llama-context.cpp`` ``context.cpp``.

- :func:`read` gives :class:`RopeView`: a file's values with llama.cpp's defaults applied, and the
  per-layer rules (sliding-window layers, ``rope_freqs``, LongRoPE factor tensors).
- :func:`to_llama` gives :class:`LlamaRope`: what llama.cpp must run to compute a scaling.
- ``file_values``, ``cli_flags``, ``override_kv``, ``python_kwargs`` and ``ggml_args`` render
  one LlamaRope; :meth:`RopeView.scaling` is the mapping backwards.

Longer than pyntk's other modules on purpose: it is the one place for every fact about how
llama.cpp treats RoPE, and splitting it would put the reading and the mapping (which must agree
field by field) in two places again.
"""

from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

from gguf import GGUFValueType, Keys

from .errors import PyntkError
from .scaling import RopeScaling

DEFAULT_BASE = 10000.0  # model.cpp load_hparams: rope_freq_base_train = 10000 before the key is read
DEFAULT_TYPE = "linear"  # model.cpp load_hparams: std::string rope_scaling("linear")
# model.cpp LLAMA_ROPE_SCALING_TYPES, in the order of enum llama_rope_scaling_type (index = value)
SCALING_TYPES = ("none", "linear", "yarn", "longrope")
DEFAULT_BETA_FAST, DEFAULT_BETA_SLOW = 32.0, 1.0  # llama-hparams.h yarn_beta_fast / yarn_beta_slow
CTX_PAD = 256  # llama-context.cpp pads n_ctx up to a multiple of this
# llama.cpp turns each position into a float32 to compute its angles (ggml-cpu/ops.cpp,
# ggml_rope_cache_init takes the position as float theta_base): past 2^24 float32 no longer holds
# every whole number, so neighbouring positions would get the same angles. Never lifted.
MAX_CONTEXT = 1 << 24
# The methods llama.cpp can run from a file's keys or its runtime flags (static NTK is a new base;
# NTK-by-parts is YaRN with its temperature cancelled through rope.scaling.attn_factor).
FILE_METHODS = ("none", "ntk", "linear", "yarn", "ntk-by-parts")


def check_context(ctx: int) -> None:
    """Refuse a target context llama.cpp cannot tell apart position by position (MAX_CONTEXT)."""
    if ctx > MAX_CONTEXT:
        raise ValueError(f"target context {ctx} is past {MAX_CONTEXT} tokens (2^24), where llama.cpp's "
                         f"float32 positions stop telling neighbouring tokens apart; give a smaller --ctx")


def cells(n_ctx: int) -> int:
    """The KV cells llama.cpp gives a context asked for ``n_ctx`` tokens (padded up to 256)."""
    return -(-max(n_ctx, 1) // CTX_PAD) * CTX_PAD

# per-pair frequency divisors llama.cpp applies on top of any scaling (model.cpp get_rope_factors):
# rope_freqs on every layer (Llama 3.1 style); LongRoPE's long or short tensor by context (Phi-3)
ROPE_FREQS = "rope_freqs.weight"
LONGROPE = ("rope_factors_long.weight", "rope_factors_short.weight")

# Architectures that encode positions without RoPE (llama_model_rope_type() returns NONE).
NO_ROPE_ARCHS = frozenset({
    "bert", "jina-bert-v2", "gpt2", "bloom", "mpt", "jais", "starcoder", "t5", "t5encoder",
    "mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "wavtokenizer-dec",
})

# llama_model_rope_type() (model.cpp): NORM rotates adjacent pairs, NEOX the two halves of a head.
_NORMAL_ARCHS = frozenset({
    "llama", "llama4", "deci", "baichuan", "starcoder", "internlm2", "minicpm", "xverse", "command-r",
    "cohere2", "olmo", "arctic", "deepseek", "deepseek2", "plm", "chatglm", "granite", "granitemoe",
    "chameleon", "bailingmoe", "neo-bert", "smolvlm", "arcee", "mistral3", "llama-embed",
})
_NEOX_ARCHS = frozenset({
    "falcon", "grok", "dbrx", "bert", "jina-bert-v2", "stablelm", "bitnet", "qwen", "qwen2", "qwen2moe",
    "qwen3", "qwen3moe", "olmo2", "olmoe", "phi2", "phi3", "phimoe", "plamo", "plamo2", "gemma",
    "gemma2", "gemma3", "gemma3n", "starcoder2", "openelm", "gptneox", "codeshell", "orion",
    "nemotron", "exaone", "exaone4", "minicpm3", "dots1", "hunyuan-moe", "openai-moe", "hunyuan-dense",
    "lfm2", "smallthinker", "glm4", "glm4moe", "ernie4_5", "ernie4_5-moe", "seed_oss", "gpt-oss",
})

@dataclass(frozen=True)
class WindowRule:
    """How llama.cpp treats an architecture's sliding-window layers (src/models/ARCH.cpp
    load_arch_hparams and graph; llama-hparams.cpp set_swa_pattern; model.cpp get_rope_freq_*).

    period: without ARCH.attention.sliding_window_pattern, layer il is a window layer when
    il % period < period - 1; a per-layer array in that key wins.
    base: "own" = rope.freq_base_swa, else llama-hparams.h's 10000; "file" = rope.freq_base_swa
    if the file has it, else the file's rope.freq_base as loaded (a gguf-set edit reaches them,
    runtime flags do not); "runtime" = the context's base like the global layers. scale: "one",
    "file" or "runtime" likewise.
    """

    period: int
    base: str = "own"
    scale: str = "one"
    needs_window: bool = True  # window layers only when ARCH.attention.sliding_window > 0
    global_rope: bool = True  # False: the global layers use no RoPE at all
    window: int = 0  # n_swa when ARCH.attention.sliding_window is absent (0: no window without it)

    def follows(self) -> str:
        """Where the window layers' rope comes from, in words."""
        if (self.base, self.scale) == ("own", "one"):
            return "their own: no scaling reaches them, in the file or at run time"
        if self.base == "runtime":
            return ("the run's base and scale, as the global layers'" if self.scale == "runtime"
                    else "the run's base, scale 1")
        return "the file's values as loaded: a gguf-set edit reaches them, runtime flags do not"


WINDOW_RULES = {
    "gemma2": WindowRule(2, base="file", scale="file", needs_window=False, window=4096),  # models/gemma2.cpp
    "gemma3": WindowRule(6),  # models/gemma3.cpp: only with sliding_window > 0
    "gemma3n": WindowRule(5, needs_window=False),  # models/gemma3n.cpp
    "cohere2": WindowRule(4, base="runtime", scale="runtime", needs_window=False,
                          global_rope=False),  # models/cohere2.cpp: only window layers rotate
    "gpt-oss": WindowRule(2, base="file", scale="file", needs_window=False),  # models/openai-moe.cpp
    "olmo2": WindowRule(4, base="runtime"),  # models/olmo2.cpp: window layers scale 1, no YaRN
}
DEFAULT_BASE_SWA = 10000.0  # llama-hparams.h rope_freq_base_train_swa

_U32, _F32, _STR = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING
# The keys through which a scaling reaches llama.cpp from a file, with the types llama.cpp expects.
FILE_KEYS = {
    Keys.LLM.CONTEXT_LENGTH: _U32,
    Keys.Rope.FREQ_BASE: _F32,
    Keys.Rope.SCALING_TYPE: _STR,
    Keys.Rope.SCALING_FACTOR: _F32,
    Keys.Rope.SCALING_ORIG_CTX_LEN: _U32,
    Keys.Rope.SCALING_ATTN_FACTOR: _F32,
}
# Per-file YaRN knobs pyntk does not write, and the architectures whose load_arch_hparams read
# them (models/grok.cpp, mistral3.cpp, deepseek2.cpp; every other architecture ignores them): a
# file where they count is refused by gguf-set rather than silently computed differently.
_YARN_KEYS = {
    "grok": (Keys.Rope.SCALING_YARN_EXT_FACTOR, Keys.Rope.SCALING_YARN_ATTN_FACTOR,
             Keys.Rope.SCALING_YARN_BETA_FAST, Keys.Rope.SCALING_YARN_BETA_SLOW),
    "mistral3": (Keys.Rope.SCALING_YARN_BETA_FAST, Keys.Rope.SCALING_YARN_BETA_SLOW,
                 Keys.Rope.SCALING_YARN_LOG_MUL),
    "deepseek2": (Keys.Rope.SCALING_YARN_LOG_MUL,),
}
# For these, rope.scaling.finetuned means "use RoPE at all" and defaults to true (models/granite.cpp).
_ROPE_SWITCH_ARCHS = frozenset({"granite", "granitemoe", "granitehybrid", "graniteswitch"})


def key(template: str, arch: str) -> str:
    return template.format(arch=arch)


def f32(value: float) -> float:
    """``value`` rounded to float32: GGUF stores rope floats and llama.cpp computes in float32."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def f32_text(value: float) -> str:
    """The shortest decimal that reads back as the same float32 (e.g. ``436936.53``)."""
    value = f32(value)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        if f32(float(text)) == value:
            return text
    return repr(value)


def yarn_temperature(factor: float) -> float:
    """YaRN's cos/sin multiplier 1 + 0.1 ln(s), which ggml applies whenever ext_factor != 0
    (ggml-cpu/ops.cpp rope_yarn: mscale *= 1 + 0.1 log(1 / freq_scale))."""
    return 1.0 + 0.1 * math.log(factor)


# --- what llama.cpp runs -----------------------------------------------------------------------

@dataclass(frozen=True)
class LlamaRope:
    """The rope parameters llama.cpp runs a model's (global) layers with.

    Every float is float32, as llama.cpp holds it, so all renderings carry the same numbers.
    ``attn_factor`` is the file key ``rope.scaling.attn_factor``: context.cpp multiplies it into
    yarn_attn_factor for every scaling type, and ggml multiplies cos/sin by it (for yarn also by
    YaRN's temperature, which context.cpp does not let the runtime flag change).
    """

    scaling_type: str  # none, linear or yarn
    freq_base: float
    factor: float = 1.0  # rope.scaling.factor; llama.cpp's freq_scale is 1/factor
    original_context: int = 0  # n_ctx_orig_yarn (0: the file's)
    attn_factor: float = 1.0
    beta_fast: float = DEFAULT_BETA_FAST
    beta_slow: float = DEFAULT_BETA_SLOW
    freq_factors: Optional[Tuple[float, ...]] = None  # llama3 bands: only as a ggml argument

    @property
    def freq_scale(self) -> float:
        # context.cpp: a type of none forces freq_scale = 1 whatever the factor
        return 1.0 if self.scaling_type == "none" else f32(1.0 / self.factor)

    @property
    def ext_factor(self) -> float:
        # context.cpp: yarn_ext_factor < 0 ('not set') becomes 1 for yarn, 0 otherwise
        return 1.0 if self.scaling_type == "yarn" else 0.0

    @property
    def cos_sin_scale(self) -> float:
        """What cos and sin end up multiplied by on the global layers."""
        t = yarn_temperature(1.0 / self.freq_scale) if self.ext_factor else 1.0
        return self.attn_factor * t

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.update(freq_scale=self.freq_scale, ext_factor=self.ext_factor, cos_sin_scale=self.cos_sin_scale)
        if self.freq_factors is not None:
            d["freq_factors"] = list(self.freq_factors)
        return d


def to_llama(scaling: RopeScaling, *, length: Optional[int] = None) -> LlamaRope:
    """The one mapping: the parameters that make llama.cpp compute ``scaling``.

    llama.cpp has no Dynamic NTK: it is the static NTK base for ``length`` tokens (unscaled when
    ``length`` is not given or within the training context). NTK-by-parts is YaRN with
    rope.scaling.attn_factor cancelling the temperature. llama3's bands exist only as ggml's
    per-pair ``freq_factors`` (llama.cpp takes them from a rope_freqs tensor, not from keys).
    """
    if not isinstance(scaling, RopeScaling):
        raise TypeError(f"scaling must be a pyntk.RopeScaling, got {type(scaling).__name__}")
    s = scaling
    L0 = s.original_context or 0
    if s.method == "none":
        return LlamaRope("none", checked_f32(s.base, "base", "base"), original_context=L0)
    if s.method == "ntk":
        return LlamaRope("none", checked_f32(s.ntk_base, "the new rope base", "alpha"), original_context=L0)
    if s.method == "dynamic":
        from .reference import dynamic_base
        return LlamaRope("none", checked_f32(dynamic_base(s, length), "the new rope base", "factor"),
                         original_context=L0)
    base, factor = checked_f32(s.base, "base", "base"), checked_f32(s.factor, "factor", "factor")
    if s.method == "linear":
        return LlamaRope("linear", base, factor, original_context=L0)
    if s.method in ("yarn", "ntk-by-parts"):
        attn = s.attn_factor if s.method == "yarn" else 1.0 / yarn_temperature(s.factor)
        return LlamaRope("yarn", base, factor, L0, checked_f32(attn, "attn_factor", "attn_factor"),
                         checked_f32(s.beta_fast, "beta_fast", "beta_fast"),
                         checked_f32(s.beta_slow, "beta_slow", "beta_slow"))
    if s.method == "llama3":
        import numpy as np

        from .reference import inv_freq
        plain = s.base ** (-2.0 * np.arange(s.dims // 2) / s.dims)
        return LlamaRope("none", base, original_context=L0,
                         freq_factors=tuple(float(v) for v in plain / inv_freq(s)[0]))
    raise AssertionError(s.method)  # pragma: no cover - RopeScaling validates the method


def checked_f32(value: float, what: str, smaller: str = "") -> float:
    """``value`` rounded to float32, as llama.cpp holds every rope float (GGUF keys, ggml's
    arguments); a ValueError naming ``what`` (and, given, the parameter to make smaller) when it
    is not a finite float32."""
    value = float(value)
    try:
        stored = f32(value)
    except OverflowError:  # struct refuses what rounds past float32's largest number
        stored = math.inf
    if not math.isfinite(stored):
        fix = f"; choose a smaller {smaller}" if smaller else ""
        raise ValueError(f"{what} {value:g} does not fit llama.cpp's float32 (at most 3.4e+38){fix}")
    return stored


def _needs_no_tensor(rope: LlamaRope, where: str) -> None:
    if rope.freq_factors is not None:
        raise PyntkError(f"llama3 scaling needs a rope_freqs tensor in the model; llama.cpp cannot take it "
                         f"from {where}")


# --- renderers ---------------------------------------------------------------------------------

def file_values(rope: LlamaRope, arch: str, context: int) -> Dict[str, Any]:
    """The key values a GGUF must hold for llama.cpp to run ``rope`` with no runtime flags."""
    _needs_no_tensor(rope, "GGUF keys")
    if (rope.beta_fast, rope.beta_slow) != (DEFAULT_BETA_FAST, DEFAULT_BETA_SLOW):
        raise PyntkError("YaRN's beta_fast/beta_slow other than 32/1 cannot be written into a file "
                         "(llama.cpp's keys for them are per-architecture); pass them at run time, "
                         "see `pyntk args`")
    values = [context, rope.freq_base, rope.scaling_type, rope.factor, rope.original_context,
              rope.attn_factor]
    return {key(t, arch): v for t, v in zip(FILE_KEYS, values)}


def file_key_types(arch: str) -> Dict[str, GGUFValueType]:
    return {key(t, arch): vtype for t, vtype in FILE_KEYS.items()}


def python_kwargs(rope: LlamaRope, arch: str, context: Optional[int] = None, *,
                  file: Optional["RopeView"] = None) -> Dict[str, Any]:
    """llama-cpp-python ``Llama(...)`` keyword arguments: every value explicit, so they override
    whatever the file holds. ``context`` also sets n_ctx and lifts the file's context_length.
    With ``file`` (the view of the file loaded), key overrides it already satisfies are left out."""
    _needs_no_tensor(rope, "llama-cpp-python's arguments")
    kw: Dict[str, Any] = {
        "rope_scaling_type": SCALING_TYPES.index(rope.scaling_type),
        "rope_freq_base": rope.freq_base,
        "rope_freq_scale": rope.freq_scale,
        "yarn_ext_factor": rope.ext_factor,
        "yarn_beta_fast": rope.beta_fast,
        "yarn_beta_slow": rope.beta_slow,
    }
    if rope.original_context:
        kw["yarn_orig_ctx"] = rope.original_context
    # context.cpp recomputes yarn_attn_factor from the factor whenever ext_factor != 0, then
    # multiplies in hparams.rope_attn_factor: only the key override reaches it.
    overrides: Dict[str, Any] = {key(Keys.Rope.SCALING_ATTN_FACTOR, arch): rope.attn_factor}
    if context is not None:
        kw["n_ctx"] = context
        overrides[key(Keys.LLM.CONTEXT_LENGTH, arch)] = context
    if file is not None:
        held = {key(Keys.Rope.SCALING_ATTN_FACTOR, arch): f32(file.attn_factor),
                key(Keys.LLM.CONTEXT_LENGTH, arch): file.context_length}
        overrides = {k: v for k, v in overrides.items() if held.get(k) != v}
    if overrides:
        kw["kv_overrides"] = overrides
    return kw


def cli_flags(rope: LlamaRope, arch: str, context: int) -> List[str]:
    """llama-cli / llama-server flags (common/arg.cpp), every value explicit."""
    _needs_no_tensor(rope, "command-line flags")
    flags = ["-c", str(context), "--rope-scaling", rope.scaling_type,
             "--rope-freq-base", f32_text(rope.freq_base), "--rope-scale", f32_text(rope.factor),
             "--yarn-ext-factor", f"{rope.ext_factor:g}"]
    if rope.original_context:
        flags += ["--yarn-orig-ctx", str(rope.original_context)]
    if rope.scaling_type == "yarn":
        flags += ["--yarn-beta-fast", f"{rope.beta_fast:g}", "--yarn-beta-slow", f"{rope.beta_slow:g}"]
    flags += ["--override-kv", f"{key(Keys.LLM.CONTEXT_LENGTH, arch)}=int:{context}",
              "--override-kv", f"{key(Keys.Rope.SCALING_ATTN_FACTOR, arch)}=float:{f32_text(rope.attn_factor)}"]
    return flags


_OVERRIDE_TYPE = {_U32: "int", _F32: "float", _STR: "str"}


def override_kv(rope: LlamaRope, arch: str, context: int) -> List[str]:
    """The file values as ``--override-kv KEY=TYPE:VALUE`` flags (what gguf-set would write)."""
    flags = ["-c", str(context)]
    types = file_key_types(arch)
    for name, value in file_values(rope, arch, context).items():
        text = f32_text(value) if types[name] == _F32 else str(value)
        flags += ["--override-kv", f"{name}={_OVERRIDE_TYPE[types[name]]}:{text}"]
    return flags


def ggml_args(rope: LlamaRope, dims: int) -> Dict[str, Any]:
    """``ggml_rope_ext`` arguments, as llama.cpp's graph passes them (attn_factor is cparams'
    yarn_attn_factor: 1 after context.cpp cancels the temperature, times the file key)."""
    args: Dict[str, Any] = dict(n_rot=dims, freq_base=rope.freq_base, freq_scale=rope.freq_scale,
                                ext_factor=rope.ext_factor, attn_factor=rope.attn_factor,
                                beta_fast=rope.beta_fast, beta_slow=rope.beta_slow,
                                n_ctx_orig=rope.original_context)
    if rope.freq_factors is not None:
        args["freq_factors"] = list(rope.freq_factors)
    return args


# --- how llama.cpp reads a file ----------------------------------------------------------------

@dataclass(frozen=True)
class LayerRope:
    """One layer's rope as llama.cpp runs it (model.cpp get_rope_freq_base / get_rope_freq_scale)."""

    index: int
    window: bool  # a sliding-window layer
    dims: int  # n_rot (n_rot_swa on window layers)
    freq_base: float
    freq_scale: float
    factors: Optional[str] = None  # name of the per-pair divisor tensor applied on top


@dataclass(frozen=True)
class RopeView:
    """A GGUF's RoPE and context hyper-parameters as llama.cpp reads them (defaults applied)."""

    path: str
    arch: str
    context_length: int
    dims: int  # n_rot of the global layers
    base: float
    scaling_type: str
    factor: float
    original_context: int
    attn_factor: float
    finetuned: bool
    mode: Optional[str]  # "normal", "neox", or None when pyntk does not know the architecture's
    head_count: Optional[int] = None
    head_count_kv: Optional[int] = None
    head_dim: Optional[int] = None
    layers: int = 0
    sliding_window: Optional[int] = None  # tokens, when the model has window layers
    window_layers: Tuple[int, ...] = ()
    base_swa: Optional[float] = None
    dims_swa: Optional[int] = None
    rope_freqs: bool = False  # a rope_freqs tensor (Llama 3.1 style factors, all layers)
    longrope: bool = False  # rope_factors_long/short tensors (Phi-3 LongRoPE)
    yarn_keys: Tuple[str, ...] = ()  # per-file YaRN knobs present (see _YARN_KEYS)
    # keys that were absent, so their value above is llama.cpp's default
    defaulted: tuple = field(default_factory=tuple)

    @property
    def has_sliding_window(self) -> bool:
        return bool(self.window_layers)

    def rope(self) -> LlamaRope:
        """What llama.cpp runs the global layers with when given no runtime flags."""
        return LlamaRope(self.scaling_type, f32(self.base), f32(self.factor), self.original_context,
                         f32(self.attn_factor))

    def factors(self, n_ctx: Optional[int] = None) -> Optional[str]:
        """The per-pair divisor tensor llama.cpp applies to every layer (model.cpp
        get_rope_factors): rope_freqs if present; else LongRoPE's long tensor iff the per-sequence
        context ``n_ctx``, padded up to a multiple of 256, exceeds the file's
        rope.scaling.original_context_length (the runtime yarn_orig_ctx does not enter), the short
        one otherwise."""
        if self.rope_freqs:
            return ROPE_FREQS
        if not self.longrope:
            return None
        if n_ctx is None:
            raise ValueError("LongRoPE's factors depend on the context: pass n_ctx")
        return LONGROPE[0] if cells(n_ctx) > self.original_context else LONGROPE[1]

    def layer_ropes(self, rope: Optional[LlamaRope] = None, *, in_file: bool = False,
                    n_ctx: Optional[int] = None) -> List[LayerRope]:
        """Each layer's rope when llama.cpp runs ``rope`` (default: the file's own), given at run
        time or, with ``in_file``, written into the file, with ``n_ctx`` cells (needed only to
        pick LongRoPE's factors): window layers follow their architecture's WindowRule
        (model.cpp get_rope_freq_base / get_rope_freq_scale)."""
        own = self.rope()
        rope = rope or own
        rule = WINDOW_RULES.get(self.arch)
        loaded = rope if in_file else own  # what hparams hold: the file's values as loaded
        factors = self.factors(n_ctx) if n_ctx is not None or not self.longrope else None
        out = []
        for il in range(self.layers):
            if il not in self.window_layers:
                if rule is None or rule.global_rope:
                    out.append(LayerRope(il, False, self.dims, rope.freq_base, rope.freq_scale, factors))
                continue
            base = {"own": self.base_swa, "file": self.base_swa or loaded.freq_base,
                    "runtime": rope.freq_base}[rule.base]
            scale = {"one": 1.0, "file": loaded.freq_scale, "runtime": rope.freq_scale}[rule.scale]
            out.append(LayerRope(il, True, self.dims_swa or self.dims, f32(base), scale, factors))
        return out

    def window_note(self, rope: LlamaRope, *, in_file: bool) -> Optional[str]:
        """What llama.cpp runs the sliding-window layers with while the global layers run ``rope``
        (written into the file or, without ``in_file``, given at run time), in a sentence."""
        if not self.has_sliding_window:
            return None
        rule = WINDOW_RULES[self.arch]
        window = [layer for layer in self.layer_ropes(rope, in_file=in_file) if layer.window]
        n, total = len(window), self.layers
        text = (f"{self.arch} has sliding-window layers ({n} of {total}, window {self.sliding_window} "
                f"tokens): llama.cpp runs them with base {f32_text(window[0].freq_base)} and scale "
                f"{f32_text(window[0].freq_scale)}, {rule.follows()}")
        if not rule.global_rope:
            return text + f"; the other {total - n} layers use no RoPE"
        if (window[0].freq_base, window[0].freq_scale) != (rope.freq_base, rope.freq_scale):
            return text + f"; only the {total - n} global layers change"
        return text

    def scaling_besides_factors(self) -> RopeScaling:
        """The scaling llama.cpp applies to the global layers with no runtime flags, besides the
        per-pair factor tensors (:meth:`factors`).

        :meth:`scaling` except for LongRoPE files (Phi-3 128k), which that refuses: those carry no
        scaling type (llama.cpp's default "linear" with no factor: scale 1, no YaRN) and
        rope.scaling.attn_factor, which multiplies cos/sin of every layer. That is YaRN with factor
        1 in pyntk's terms, as :meth:`scaling` already says for a file with only an attn_factor.
        """
        if not self.longrope or self.rope_freqs:
            return self.scaling()
        if self.scaling_type not in ("linear", "longrope") or self.factor != 1.0:
            raise PyntkError(f"{self.path}: LongRoPE factors together with rope.scaling.type "
                             f"{self.scaling_type} factor {self.factor:g}, which pyntk does not model")
        return scaling_of(replace(self.rope(), scaling_type="none"),
                          replace(self, scaling_type="none", longrope=False))

    def scaling(self) -> RopeScaling:
        """The scaling llama.cpp applies to the global layers with no runtime flags."""
        return scaling_of(self.rope(), self)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["defaulted"] = list(self.defaulted)
        d["window_layers"] = list(self.window_layers)
        d["yarn_keys"] = list(self.yarn_keys)
        d["llama_cpp"] = self.rope().to_dict()
        return d


def scaling_of(rope: LlamaRope, view: RopeView) -> RopeScaling:
    """The mapping backwards: the RopeScaling whose ``to_llama`` is ``rope`` (up to float32)."""
    where = view.path
    if view.scaling_type == "longrope" or view.longrope:
        raise PyntkError(f"{where}: uses LongRoPE (per-frequency factor tensors), which pyntk does not "
                         f"model; use the model's own long-context settings")
    if view.yarn_keys:
        raise PyntkError(f"{where}: sets {', '.join(view.yarn_keys)}, YaRN knobs pyntk does not model; "
                         f"pyntk cannot say what this file computes")
    common = dict(base=rope.freq_base, dims=view.dims)
    scale = rope.freq_scale
    if rope.scaling_type == "yarn":
        factor = 1.0 / scale
        cancelled = f32(1.0 / yarn_temperature(factor))
        extra = dict(factor=factor, original_context=rope.original_context or view.context_length,
                     beta_fast=rope.beta_fast, beta_slow=rope.beta_slow)
        if factor > 1.0 and rope.attn_factor == cancelled:
            return RopeScaling(method="ntk-by-parts", **common, **extra)
        return RopeScaling(method="yarn", attn_factor=rope.attn_factor, **common, **extra)
    if rope.attn_factor != 1.0:
        if scale != 1.0:
            raise PyntkError(f"{where}: rope.scaling.attn_factor {rope.attn_factor:g} multiplies cos/sin of "
                             f"a linear-scaled model, which no pyntk scaling describes; `pyntk gguf-set` "
                             f"rewrites it, `pyntk gguf-reset` restores the original")
        # ext_factor 0 and freq_scale 1: only the cos/sin multiplier -- YaRN with factor 1
        return RopeScaling(method="yarn", factor=1.0, attn_factor=rope.attn_factor,
                           original_context=rope.original_context or view.context_length, **common)
    if scale == 1.0:
        return RopeScaling(method="none", **common)
    return RopeScaling(method="linear", factor=1.0 / scale, **common)


def _whole(path: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PyntkError(f"{path}: {name} should be a non-negative integer, got {value!r}; "
                         f"the file is corrupt or was written by a broken converter")
    return value


def _number(path: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PyntkError(f"{path}: {name} should be a finite number, got {value!r}; "
                         f"the file is corrupt or was written by a broken converter")
    return float(value)


def _first(value: Any) -> Any:
    # per-layer arrays: llama.cpp's n_head() / n_head_kv() without an index are layer 0's
    if isinstance(value, list):
        return value[0] if value else None
    return value


def read(source) -> RopeView:
    """Read RoPE hyper-parameters as llama.cpp's llama_model::load_hparams reads them.

    ``source``: a path, a GGUFFile, or anything with ``.path``, ``.value(key)`` and ``.tensors``
    (pyntk's view of a file's original values).
    """
    if hasattr(source, "value"):
        gguf = source
    else:
        from .gguf_file import GGUFFile
        from .record import LAYOUT_KEY
        gguf = GGUFFile(source, layout_key=LAYOUT_KEY)
    path = gguf.path
    arch = gguf.value(Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch or not arch.isprintable():  # it goes into key names, messages
        raise PyntkError(f"{path}: general.architecture is missing or not a name ({arch!r}); this GGUF is "
                         f"not a model llama.cpp can load")
    if arch in NO_ROPE_ARCHS:
        raise PyntkError(f"{path}: architecture {arch!r} does not use RoPE, so there is nothing to scale")
    defaulted = []

    def get(template: str, default: Any = None) -> Any:
        name = key(template, arch)
        value = gguf.value(name)
        if value is None:
            defaulted.append(name)
            return default
        return value

    ctx = get(Keys.LLM.CONTEXT_LENGTH)
    if ctx is None:
        raise PyntkError(f"{path}: {key(Keys.LLM.CONTEXT_LENGTH, arch)} is missing; llama.cpp "
                         f"cannot load this file either")
    ctx = _whole(path, "context_length", ctx)
    heads = _first(get(Keys.Attention.HEAD_COUNT))
    heads_kv = _first(get(Keys.Attention.HEAD_COUNT_KV, heads))
    heads = heads if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0 else None
    # model.cpp load_hparams: n_embd_head_k = attention.key_length, default n_embd / n_head;
    # n_rot = rope.dimension_count, default n_embd_head_k
    head_dim = get(Keys.Attention.KEY_LENGTH)
    embd = get(Keys.LLM.EMBEDDING_LENGTH)
    if head_dim is None and isinstance(embd, int) and heads:
        head_dim = embd // heads
    dims = get(Keys.Rope.DIMENSION_COUNT, head_dim)
    if dims is None:
        raise PyntkError(f"{path}: cannot tell the rotary dimensions ({key(Keys.Rope.DIMENSION_COUNT, arch)} "
                         f"and the head size keys are missing)")
    dims = _whole(path, "rope.dimension_count", dims)
    dims_swa = gguf.value(key(Keys.Rope.DIMENSION_COUNT_SWA, arch))

    # model.cpp load_hparams: rope.scaling.factor, else the legacy rope.scale_linear; 0 = none
    factor = get(Keys.Rope.SCALING_FACTOR)
    if factor is None:
        factor = gguf.value(f"{arch}.rope.scale_linear") or 0.0
    factor = _number(path, "rope.scaling.factor", factor)
    scaling_type = get(Keys.Rope.SCALING_TYPE, DEFAULT_TYPE)
    if scaling_type not in SCALING_TYPES:
        raise PyntkError(f"{path}: unknown rope.scaling.type {scaling_type!r}; llama.cpp accepts "
                         f"{', '.join(SCALING_TYPES)}, so it would refuse this file")
    layers = gguf.value(key(Keys.LLM.BLOCK_COUNT, arch))
    layers = layers if isinstance(layers, int) and not isinstance(layers, bool) and 0 < layers < 1 << 16 else 0
    window = gguf.value(key(Keys.Attention.SLIDING_WINDOW, arch))
    window = window if isinstance(window, int) and not isinstance(window, bool) else None
    rule = WINDOW_RULES.get(arch)
    if window is None and rule is not None and rule.window:  # models/gemma2.cpp: n_swa = 4096 first
        defaulted.append(key(Keys.Attention.SLIDING_WINDOW, arch))
        window = rule.window
    window_layers: Tuple[int, ...] = ()
    base_swa = None
    if rule is not None and (window or not rule.needs_window):
        window_layers = _window_layers(gguf, arch, rule, layers)
        if rule.base != "runtime":  # gemma2/gpt-oss read the key too, defaulting to the file's base
            base_swa = gguf.value(key(Keys.Rope.FREQ_BASE_SWA, arch))
            if base_swa is None and rule.base == "own":
                defaulted.append(key(Keys.Rope.FREQ_BASE_SWA, arch))
                base_swa = DEFAULT_BASE_SWA
            if base_swa is not None:
                base_swa = _number(path, "rope.freq_base_swa", base_swa)
    finetuned = bool(get(Keys.Rope.SCALING_FINETUNED, arch in _ROPE_SWITCH_ARCHS))
    if arch in _ROPE_SWITCH_ARCHS:
        if not finetuned:
            raise PyntkError(f"{path}: {key(Keys.Rope.SCALING_FINETUNED, arch)} = false switches RoPE off in "
                             f"{arch} models (models/granite.cpp), so there is nothing to scale")
        finetuned = False  # not a fine-tune for a scaling here
    tensors = {t.name for t in getattr(gguf, "tensors", ())}
    return RopeView(
        path=path,
        arch=arch,
        context_length=ctx,
        dims=dims,
        base=_number(path, "rope.freq_base", get(Keys.Rope.FREQ_BASE, DEFAULT_BASE)),
        scaling_type=scaling_type,
        factor=1.0 if factor == 0.0 else factor,
        original_context=_whole(path, "rope.scaling.original_context_length",
                                get(Keys.Rope.SCALING_ORIG_CTX_LEN, ctx)),
        attn_factor=_number(path, "rope.scaling.attn_factor", get(Keys.Rope.SCALING_ATTN_FACTOR, 1.0)),
        finetuned=finetuned,
        mode=rope_mode(arch),
        head_count=heads,
        head_count_kv=heads_kv if isinstance(heads_kv, int) and not isinstance(heads_kv, bool) else None,
        head_dim=head_dim if isinstance(head_dim, int) else None,
        layers=layers,
        sliding_window=(window or None) if window_layers else None,
        window_layers=window_layers,
        base_swa=base_swa,
        dims_swa=_whole(path, "rope.dimension_count_swa", dims_swa) if dims_swa is not None else None,
        rope_freqs=ROPE_FREQS in tensors,
        longrope=bool(set(LONGROPE) & tensors),
        yarn_keys=tuple(key(t, arch) for t in _YARN_KEYS.get(arch, ()) if gguf.value(key(t, arch)) is not None),
        defaulted=tuple(defaulted),
    )


def rope_mode(arch: str) -> Optional[str]:
    if arch in _NORMAL_ARCHS:
        return "normal"
    if arch in _NEOX_ARCHS:
        return "neox"
    return None


def _window_layers(gguf, arch: str, rule: WindowRule, layers: int) -> Tuple[int, ...]:
    """model.cpp load_swa_pattern: a per-layer array wins, else a period (the key's or the
    architecture's) for llama-hparams.cpp set_swa_pattern."""
    n = rule.period
    pattern = gguf.value(key(Keys.Attention.SLIDING_WINDOW_PATTERN, arch))
    if isinstance(pattern, list):
        return tuple(i for i, w in enumerate(pattern[:layers]) if w)
    if isinstance(pattern, int) and not isinstance(pattern, bool) and pattern >= 0:
        n = pattern
    return tuple(i for i in range(layers) if n == 0 or i % n < n - 1)


def with_context(rope: LlamaRope, view: RopeView) -> LlamaRope:
    """``rope`` with the file's training context filled in where the scaling left it open."""
    return rope if rope.original_context else replace(rope, original_context=view.original_context)
