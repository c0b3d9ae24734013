"""The decoder network of graphs.py, run layer by layer from the file.

Memory: a run holds the activations of its tokens and one layer's weights, dequantized when the
layer is reached and dropped after it; the token embeddings are read only for the tokens given,
and the output matrix in blocks of rows. So a model of any size runs in about one layer's float32
weights (benchmarks/bench_verify.py measures it). Several passes (exact, and with llama.cpp's
rounding) run side by side, so each layer is dequantized once for all of them.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from gguf import Keys

from ..errors import PyntkError
from ..gguf_file import GGUFFile
from ..llamacpp import LayerRope, LlamaRope, RopeView, to_llama
from ..llamacpp import read as read_view
from ..reference import inv_freq
from ..scaling import RopeScaling
from . import numerics as nx
from .graphs import GRAPHS, Graph
from .weights import Weights

ARCHS = tuple(GRAPHS)
OUTPUT_BLOCK_VALUES = 1 << 23  # output-matrix values dequantized at a time (32 MiB as float32)


@dataclass(frozen=True)
class Matrix:
    values: np.ndarray  # float32 (rows, columns), used as y = x @ values.T
    rounding: Optional[str]  # input_rounding of the stored type
    bias: Optional[np.ndarray] = None

    def __call__(self, x: np.ndarray, ggml_rounding: bool = False) -> np.ndarray:
        if ggml_rounding:
            x = nx.round_input(x, self.rounding)
        # float32 products: twice as fast as float64 and as exact as llama.cpp's own F32 path
        y = (x.astype(np.float32) @ self.values.T).astype(np.float64)
        return y if self.bias is None else y + self.bias


@dataclass(frozen=True)
class LayerRotation:
    """What one layer's RoPE computes in the reference."""

    scaling: RopeScaling  # its angles (and YaRN's temperature)
    multiplier: float  # on cos and sin besides YaRN's temperature
    factors: Optional[str]  # name of the per-pair divisor tensor applied on top


def window_rotation(scaling: RopeScaling, glob: LlamaRope, layer: LayerRope) -> LayerRotation:
    """A sliding-window layer, the global layers running ``scaling`` (``glob`` in llama.cpp's
    terms). llama.cpp gives each layer its own base and scale only (model.cpp get_rope_freq_base
    and _scale); ext_factor, attn_factor, n_ctx_orig and YaRN's betas are the context's.

    - scale 1 (Gemma 3; Gemma 2 under runtime flags): unscaled angles at the layer's base.
      llama.cpp multiplies cos/sin of every layer by rope.scaling.attn_factor, YaRN's temperature
      only where the layer is scaled (ggml's mscale follows the layer's freq_scale); for a yarn
      scaling that key is its attn_factor, every other scaling claims 1 (an ntk-by-parts run,
      whose attn_factor cancels the temperature on the global layers, therefore fails here:
      llama.cpp shrinks the window layers).
    - the global layers' scale (Gemma 2 after `pyntk gguf-set`: its window layers take the file's
      base and scale as loaded): all else being the context's, the layer runs the scaling itself,
      at its own base (the global layers' too, unless a runtime flag moved theirs: verify's
      neighbours).
    """
    if layer.freq_scale == 1.0:
        multiplier = scaling.attn_factor if scaling.method == "yarn" else 1.0
        return LayerRotation(RopeScaling(base=layer.freq_base, dims=layer.dims), multiplier, layer.factors)
    if layer.freq_scale == glob.freq_scale and layer.dims == scaling.dims:
        return LayerRotation(scaling.replace(base=layer.freq_base), 1.0, layer.factors)
    raise PyntkError(f"layer {layer.index} is a sliding-window layer rotating {layer.dims} dims scaled by "
                     f"{1 / layer.freq_scale:g}, the global layers {scaling.dims} dims scaled by "
                     f"{1 / glob.freq_scale:g}; pyntk's reference does not model that")


class Model:
    """A GGUF model in numpy, its weights read from the file as they are needed; get one with
    :func:`load`."""

    def __init__(self, path: str, gguf: GGUFFile, view: RopeView) -> None:
        self.path = path
        self.rope = view
        self.graph: Graph = GRAPHS[view.arch]
        self.weights = Weights(gguf)
        self.hp = _hparams(gguf, view, self.graph)
        self.n_layer = self.hp["n_layer"]
        self.n_vocab = self.weights.rows("token_embd.weight") if "token_embd.weight" in self.weights else 0
        tied = not self.graph.output or "output.weight" not in self.weights
        self.output = "token_embd.weight" if tied else "output.weight"
        self._layers = self._check_tensors()

    def _check_tensors(self) -> List[List[str]]:
        """Each layer's tensor names; refuses a file whose tensors are not this network's."""
        g, w, path = self.graph, self.weights, self.path
        unused = set(w.infos)

        def need(name: str) -> None:
            if name not in w:
                raise PyntkError(f"{path}: tensor {name!r} is missing; llama.cpp cannot load this file either")
            unused.discard(name)

        for name in ("token_embd.weight", "output_norm.weight"):
            need(name)
        optional = (["output.weight"] if g.output else []) + (["output.bias"] if g.output_bias else [])
        optional += list(g.factor_tensors)
        unused -= set(optional)
        layers = []
        for il in range(self.n_layer):
            blk = f"blk.{il}."
            qkv = ["attn_qkv"] if blk + "attn_qkv.weight" in w else ["attn_q", "attn_k", "attn_v"]
            names = ["attn_norm", *qkv, "attn_output", "ffn_norm", "ffn_up", "ffn_down"]
            names += [] if g.ffn == "swiglu" else ["ffn_gate"]
            names += ["attn_q_norm", "attn_k_norm"] if g.qk_norm else []
            names += ["post_attention_norm", "post_ffw_norm"] if g.post_norms else []
            for name in names:
                need(f"{blk}{name}.weight")
            present = [blk + n + ".weight" for n in names] + [blk + o for o in g.optional if blk + o in w]
            unused -= set(present)
            layers.append(present)
        if unused:
            # Refuse rather than silently compute a different network than llama.cpp does.
            raise PyntkError(f"{path}: tensors {', '.join(sorted(unused)[:4])} are not part of the "
                             f"plain {g.arch} network pyntk's reference computes (mixture of experts, "
                             f"scale tensors ...); verify a plain {g.arch} model")
        return layers

    def roundings(self) -> List[str]:
        """How llama.cpp rounds the matrix-product inputs, one entry per kind ('none (F32)')."""
        names = [n for layer in self._layers for n in layer if len(self.weights.infos[n].shape) > 1]
        names.append(self.output)
        return sorted({nx.input_rounding(self.weights.type(n)) or "none (F32)" for n in names})

    def file_scaling(self) -> RopeScaling:
        return self.rope.scaling_besides_factors()

    def rotations(self, scaling: RopeScaling, n_ctx: int) -> List[LayerRotation]:
        """Each layer's RoPE for ``scaling`` on the global layers, with the per-layer rules of
        the llama.cpp contract (RopeView.layer_ropes) and llama.cpp running ``n_ctx`` cells."""
        view = self.rope
        if scaling.dims != view.dims:
            raise PyntkError(f"the scaling rotates {scaling.dims} dims but {self.path} rotates "
                             f"{view.dims} (rope.dimension_count)")
        glob = to_llama(scaling)
        layers = {r.index: r for r in view.layer_ropes(glob, n_ctx=n_ctx)}
        out = []
        for il in range(self.n_layer):
            layer = layers.get(il)
            if layer is None:
                raise PyntkError(f"{self.path}: layer {il} has no RoPE in llama.cpp, which pyntk's "
                                 f"reference does not model")
            if layer.window:
                out.append(window_rotation(scaling, glob, layer))
            else:
                out.append(LayerRotation(scaling, 1.0, layer.factors))
        return out

    def logits(self, tokens, positions, scaling: Optional[RopeScaling] = None,
               visible: Optional[np.ndarray] = None, *, rows=None, ggml_rounding: bool = False,
               mode: Optional[str] = None, n_ctx: Optional[int] = None) -> np.ndarray:
        """Logits (rows, vocab) in float64 for ``tokens`` at ``positions``.

        scaling        the RoPE scaling of the global layers; default: the file's, as llama.cpp
                       applies it; the other layers follow llama.cpp's rules for them
        visible        boolean (tokens, tokens): visible[i, j] means token i attends to token j;
                       default: llama.cpp's causal mask, which compares positions. Sliding-window
                       layers also mask keys llama.cpp's window does not reach
        rows           indices of the tokens whose logits are wanted; default: all
        ggml_rounding  round as ggml's CPU backend does (module docstring of pyntk.forward)
        mode           the rope mode to assume ("normal"/"neox"); default: the architecture's
        n_ctx          llama.cpp's context size being mirrored (it picks LongRoPE's factors);
                       default: just the tokens given
        """
        return self.run(tokens, positions, [(scaling, ggml_rounding)], visible, rows=rows,
                        mode=mode, n_ctx=n_ctx)[0]

    def run(self, tokens, positions, passes: Sequence[Tuple[Optional[RopeScaling], bool]],
            visible: Optional[np.ndarray] = None, *, rows=None, mode: Optional[str] = None,
            n_ctx: Optional[int] = None) -> List[np.ndarray]:
        """:meth:`logits` for several passes at once, one per (scaling, ggml_rounding) in
        ``passes``: each layer is read from the file once for all of them."""
        tokens = np.asarray(tokens, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        n = len(tokens)
        if tokens.ndim != 1 or positions.shape != tokens.shape or n == 0:
            raise ValueError("tokens and positions must be non-empty 1-D sequences of the same length")
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise ValueError(f"token ids must be from 0 to {self.n_vocab - 1}")
        if positions.min() < 0:
            raise ValueError("positions must be >= 0")
        if visible is None:
            visible = positions[None, :] <= positions[:, None]
        visible = np.asarray(visible, dtype=bool)
        if visible.shape != (n, n) or not visible.diagonal().all():
            raise ValueError(f"visible must be a ({n}, {n}) boolean matrix with a true diagonal "
                             f"(every token sees itself)")
        rotations = [self.rotations(s or self.file_scaling(), n_ctx or n) for s, _ in passes]
        roundings = tuple(r for _, r in passes)
        with nx.one_blas_thread():
            return self._run(tokens, positions, rotations, visible, rows, roundings,
                             mode or self.rope.mode)

    def _run(self, tokens, positions, rotations, visible, rows, passes, mode) -> List[np.ndarray]:
        hp, g = self.hp, self.graph
        masks = {False: np.where(visible, 0.0, -np.inf)}
        if hp["n_swa"]:  # llama-hparams.h is_masked_swa, LLAMA_SWA_TYPE_STANDARD
            near = positions[:, None] - positions[None, :] < hp["n_swa"]
            masks[True] = np.where(visible & near, 0.0, -np.inf)
        tables = _RopeTables(positions, self._factor_tensors([r for rs in rotations for r in rs]))

        x0 = self.weights.take("token_embd.weight", tokens).astype(np.float64)
        if g.embed_scale:
            x0 *= math.sqrt(hp["n_embd"])
        xs = [x0.copy() for _ in passes]
        for il in range(self.n_layer):
            layer = self._read_layer(il)
            window = hp["n_swa"] > 0 and il in self.rope.window_layers
            for p, r in enumerate(passes):
                cos, sin = tables.get(rotations[p][il], r)
                xs[p] = self._block(xs[p], layer, cos, sin, masks[window], mode, r)
            del layer  # before the next is read: one layer in memory, not two
        select = slice(None) if rows is None else np.asarray(rows)
        hs = [nx.rms_norm(x[select], self._vector("output_norm.weight"), hp["eps"]) for x in xs]
        return self._output(hs, passes)

    def _block(self, x, layer, cos, sin, mask, mode, r) -> np.ndarray:
        hp, g = self.hp, self.graph
        n, eps, hd = len(x), hp["eps"], hp["head_dim"]
        h = nx.rms_norm(x, layer["attn_norm"], eps)
        if "attn_qkv" in layer:
            qkv = layer["attn_qkv"](h, r)
            q, k, v = np.split(qkv, [hp["n_head"] * hd, (hp["n_head"] + hp["n_head_kv"]) * hd], axis=1)
        else:
            q, k, v = layer["attn_q"](h, r), layer["attn_k"](h, r), layer["attn_v"](h, r)
        q = q.reshape(n, hp["n_head"], hd)
        k = k.reshape(n, hp["n_head_kv"], hd)
        v = v.reshape(n, hp["n_head_kv"], hp["head_dim_v"])
        if g.qk_norm:
            q, k = nx.rms_norm(q, layer["attn_q_norm"], eps), nx.rms_norm(k, layer["attn_k_norm"], eps)
        q, k = nx.rotate(q, cos, sin, mode), nx.rotate(k, cos, sin, mode)
        a = layer["attn_output"](nx.attention(q, k, v, mask, g.attn_scale(hp), hp["attn_softcap"]), r)
        if g.post_norms:
            a = nx.rms_norm(a, layer["post_attention_norm"], eps)
        x = x + a
        h = nx.rms_norm(x, layer["ffn_norm"], eps)
        if g.ffn == "swiglu":
            gate, up = np.split(layer["ffn_up"](h, r), 2, axis=1)
            f = nx.silu(gate) * up
        elif g.ffn == "gelu":
            f = nx.gelu(layer["ffn_gate"](h, r), r) * layer["ffn_up"](h, r)
        else:
            f = nx.silu(layer["ffn_gate"](h, r)) * layer["ffn_up"](h, r)
        f = layer["ffn_down"](f, r)
        if g.post_norms:
            f = nx.rms_norm(f, layer["post_ffw_norm"], eps)
        return x + f

    def _read_layer(self, il: int) -> Dict[str, object]:
        """Layer il's weights, dequantized: vectors as float64, matrices as Matrix."""
        w, names = self.weights, self._layers[il]
        blk = f"blk.{il}."
        out: Dict[str, object] = {}
        for name in names:
            if not name.endswith(".weight"):
                continue
            short = name[len(blk):-len(".weight")]
            if len(w.infos[name].shape) == 1:
                out[short] = self._vector(name)
            else:
                bias = self._vector(blk + short + ".bias") if blk + short + ".bias" in names else None
                out[short] = Matrix(w.read(name), nx.input_rounding(w.type(name)), bias)
        qkv = out.get("attn_qkv")
        separate = [blk + f"attn_{c}.bias" for c in "qkv"]
        if isinstance(qkv, Matrix) and qkv.bias is None and all(b in names for b in separate):
            # model.cpp create_tensor_qkv: a fused matrix may come with separate q/k/v biases
            out["attn_qkv"] = Matrix(qkv.values, qkv.rounding,
                                     np.concatenate([self._vector(b) for b in separate]))
        return out

    def _vector(self, name: str) -> np.ndarray:
        return self.weights.read(name).astype(np.float64)

    def _factor_tensors(self, rotations: List[LayerRotation]) -> Dict[str, np.ndarray]:
        names = {r.factors for r in rotations if r.factors}
        return {name: self._vector(name) for name in names}

    def _output(self, hs: List[np.ndarray], passes: Tuple[bool, ...]) -> List[np.ndarray]:
        """The output matrix (or the tied embeddings) applied to every pass's rows, read in blocks
        of rows so that a large vocabulary never sits in memory whole."""
        w, name = self.weights, self.output
        rounding = nx.input_rounding(w.type(name))
        x = np.concatenate([nx.round_input(h, rounding) if r else h for h, r in zip(hs, passes)])
        x = x.astype(np.float32)
        out = np.empty((len(x), self.n_vocab), dtype=np.float32)
        step = max(1, OUTPUT_BLOCK_VALUES // x.shape[1])
        for start in range(0, self.n_vocab, step):
            stop = min(self.n_vocab, start + step)
            np.matmul(x, w.read(name, start, stop).T, out=out[:, start:stop])
        logits = out.astype(np.float64)
        if "output.bias" in w and name == "output.weight":
            logits += self._vector("output.bias")
        if self.hp["softcap"]:
            logits = self.hp["softcap"] * np.tanh(logits / self.hp["softcap"])
        return np.split(logits, len(hs))


class _RopeTables:
    """cos and sin (tokens, pairs) per distinct layer rotation and pass, computed once."""

    def __init__(self, positions: np.ndarray, factors: Dict[str, np.ndarray]) -> None:
        self.positions, self.factors, self.cache = positions, factors, {}

    def get(self, rot: LayerRotation, ggml_rounding: bool) -> Tuple[np.ndarray, np.ndarray]:
        key = (rot, ggml_rounding)
        if key not in self.cache:
            s, positions = rot.scaling, self.positions
            # Dynamic NTK follows the sequence length, which is the last position + 1.
            inv, temperature = inv_freq(s, seq_len=int(positions.max()) + 1)
            if rot.factors:
                inv = inv / self.factors[rot.factors]
            angles = positions[:, None].astype(np.float64) * inv[None, :]
            if ggml_rounding:
                error = nx.float32_angle_error(s, positions)
                angles += error * np.random.default_rng(0).uniform(-1.0, 1.0, angles.shape)
            m = temperature * rot.multiplier
            self.cache[key] = (np.cos(angles) * m, np.sin(angles) * m)
        return self.cache[key]


def load(path) -> Model:
    """The model at ``path`` (its metadata; weights are read during each run), cached by path,
    size and mtime."""
    path = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PyntkError(f"{path}: no such file; check the path") from None
    return _load(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _load(path: str, size: int, mtime_ns: int) -> Model:
    del size, mtime_ns  # part of the cache key only: an edited file is loaded again
    gguf = GGUFFile(path)
    view = read_view(gguf)
    if view.arch not in ARCHS:
        raise PyntkError(f"{path}: architecture {view.arch!r} is not supported by pyntk's reference "
                         f"forward pass (supported: {', '.join(ARCHS)})")
    return Model(path, gguf, view)


def _hparams(gguf: GGUFFile, view: RopeView, graph: Graph) -> dict:
    arch, path = view.arch, gguf.path

    def get(template: str, default=None):
        name = template.format(arch=arch)
        value = gguf.value(name, default)
        if value is None:
            raise PyntkError(f"{path}: {name} is missing; llama.cpp cannot load this file either")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise PyntkError(f"{path}: {name} is {value!r}; pyntk's reference handles one value for "
                             f"all layers only")
        return value

    n_embd = get(Keys.LLM.EMBEDDING_LENGTH)
    n_head = get(Keys.Attention.HEAD_COUNT)
    n_head_kv = get(Keys.Attention.HEAD_COUNT_KV, n_head)
    if get(Keys.LLM.EXPERT_COUNT, 0):
        raise PyntkError(f"{path}: is a mixture of experts, which pyntk's reference does not compute; "
                         f"verify a dense {arch} model")
    if not n_head or not n_head_kv or n_head % n_head_kv:
        raise PyntkError(f"{path}: {n_head} attention heads cannot share {n_head_kv} key/value heads")
    head_dim = get(Keys.Attention.KEY_LENGTH, n_embd // n_head)
    head_dim_v = get(Keys.Attention.VALUE_LENGTH, n_embd // n_head)
    whole_heads = arch in ("llama", "qwen2", "qwen3")  # their graphs assert n_embd_head == n_rot
    if (whole_heads and (head_dim_v != head_dim or view.dims != head_dim)) or view.dims > head_dim:
        raise PyntkError(f"{path}: llama.cpp's {arch} graph cannot run key, value and rotary sizes "
                         f"{head_dim}, {head_dim_v}, {view.dims}")
    softcaps = [float(get(*cap)) if cap[0] else 0.0 for cap in (graph.final_softcap, graph.attn_softcap)]
    return dict(n_layer=get(Keys.LLM.BLOCK_COUNT), n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                head_dim=head_dim, head_dim_v=head_dim_v, eps=float(get(Keys.Attention.LAYERNORM_RMS_EPS)),
                n_swa=view.sliding_window or 0, softcap=softcaps[0], attn_softcap=softcaps[1])
