"""The sparse randomized encoder (``sparse-randomized-encoder.txt``, Sec. 2.2, Eq. 2-3; Sec. 4; App. 8.3).

An image is encoded patch by patch against an overcomplete dictionary of unit-L2 atoms
(:mod:`~robustlab.defenses.dictionary`):

1. projection ``xbar_ij = D^T x_ij``: a frozen convolution whose weights are the atoms
   (``n x n`` kernel, stride ``S``), giving an ``(N, L, m, m)`` map;
2. top-T: at each spatial position keep the ``T`` of the ``L`` coefficients largest in absolute
   value, zero the rest (lateral inhibition);
3. dropout (Eq. 2): drop each surviving coefficient with probability ``p``, at training *and*
   test time, from the layer's own generator (:class:`~robustlab.core.randomness.Stochastic`:
   fresh every forward, one draw inside ``frozen``, a new one after ``resample``); survivors are
   not rescaled (the quantizer discards their scale anyway);
4. ternary quantization (Eq. 3)::

       xhat(l) = sign(x(l)) * ||d_l||_1   if |x(l)| / (eps * ||d_l||_1) >= beta,   else 0

   computed as ``|x| >= beta * eps * ||d_l||_1`` (the same test, defined at ``eps = 0``). By
   Hoelder an l_inf perturbation of size ``eps`` moves coefficient ``l`` by at most
   ``eps * ||d_l||_1``, so with ``beta > 1`` it cannot flip the sign of a nonzero output.

``keep_sign=False`` reproduces the released code, which outputs ``|xhat|`` (the sign discarded;
its authors later called that a bug).

Gradients (Sec. 4, W-NFGA): projection, top-T and dropout are differentiable through the
surviving coefficients only (a mask multiplies them, as max-pooling routes its gradient). The
quantizer is a :class:`~robustlab.core.bpda.BPDALayer` (:class:`TernaryQuantizer`): outside
``bpda`` its gradient is zero almost everywhere; inside ``bpda(model, "identity")`` it is the
identity, inside ``bpda(model, "smooth")`` the derivative of Eq. 10 (Eq. 9), sharpness ``sigma``
(the paper: 0.25). For ``keep_sign=False`` the smooth surrogate is our analogue of Eq. 10 for
``|xhat|``: ``||d_l||_1 (1 + (tanh((x - a)/sigma) - tanh((x + a)/sigma)) / 2)``, ``a = beta eps ||d_l||_1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import InputError, check_images, check_positive_int, is_number
from ..core.bpda import BPDALayer
from ..core.randomness import Stochastic

__all__ = ["SparseEncoder", "TernaryQuantizer"]


def _number(value: object, what: str, low: float, high: float | None = None, *, open_high: bool = False) -> float:
    if not is_number(value):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    if not is_number(value, low, high, high_open=open_high):
        bound = "" if high is None else (f" and < {high}" if open_high else f" and <= {high}")
        raise InputError(f"{what} must be >= {low}{bound}, got {value!r}")
    return float(value)


class TernaryQuantizer(BPDALayer):
    """Eq. 3: ``sign(x) * ||d_l||_1`` where ``|x| >= beta * eps * ||d_l||_1``, else 0.

    Input and output are ``(N, L, H, W)`` coefficient maps; ``l1`` holds ``||d_l||_1`` per atom.
    Its :meth:`surrogate` is Eq. 10 (used by ``bpda(model, "smooth")``).

    Args:
        l1: the atoms' L1 norms, shape ``(L,)``.
        eps: the l_inf budget designed for.
        beta: the dead-zone factor (the paper: 3; ``> 1`` guarantees no sign flips).
        sigma: sharpness of the smooth surrogate (App. 8.3; the paper: 0.25).
        keep_sign: ``False`` outputs ``|xhat|`` as the released code does.
    """

    def __init__(self, l1: torch.Tensor, eps: float, beta: float, *, sigma: float = 0.25, keep_sign: bool = True) -> None:
        super().__init__()
        self.register_buffer("l1", l1.detach().clone().reshape(-1))
        self.eps = _number(eps, "eps", 0.0)
        self.beta = _number(beta, "beta", 0.0)
        self.sigma = _number(sigma, "sigma", 0.0)
        if self.sigma == 0:
            raise InputError("sigma must be > 0, got 0")
        self.keep_sign = bool(keep_sign)

    l1: torch.Tensor

    def extra_repr(self) -> str:
        return f"eps={self.eps}, beta={self.beta}, sigma={self.sigma}, keep_sign={self.keep_sign}"

    def _norms(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.l1.numel():
            raise InputError(
                f"TernaryQuantizer expects (N, {self.l1.numel()}, H, W) coefficients, got {tuple(x.shape)}"
            )
        return self.l1.to(x.dtype).view(1, -1, 1, 1)

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        l1 = self._norms(x)
        passed = x.abs() >= self.beta * self.eps * l1
        level = torch.sign(x) * l1 if self.keep_sign else (x != 0).to(x.dtype) * l1
        return torch.where(passed, level, torch.zeros_like(x))

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 10 (``keep_sign``) or its ``|.|`` analogue: a smooth approximation of Eq. 3."""
        l1 = self._norms(x)
        a = self.beta * self.eps * l1
        upper = torch.tanh((x - a) / self.sigma)
        lower = torch.tanh((x + a) / self.sigma)
        if self.keep_sign:
            return 0.5 * l1 * (upper + lower)
        return l1 * (1.0 + 0.5 * (upper - lower))


class SparseEncoder(Stochastic):
    """Sparse randomized encoder: projection, top-T, dropout, ternary quantization (Sec. 2.2).

    Maps images ``(N, C, H, W)`` in [0, 1] to a code ``(N, L, m_h, m_w)`` with
    ``m = floor((H - n) / S) + 1``. Random (dropout) unless ``dropout_p == 0``.

    Args:
        dictionary: the atoms, ``(L, C, n, n)`` (as :func:`~robustlab.defenses.dictionary.learn_dictionary`
            returns them); copied into a buffer, never trained.
        stride: patch stride ``S``.
        top_t: ``T``, coefficients kept per patch (the paper: 50 of 500).
        dropout_p: ``p``, probability of dropping each of them (the paper: 0.95).
        eps: the l_inf budget the quantizer's dead zone is designed for (Eq. 3).
        beta: dead-zone factor (the paper: 3).
        keep_sign: ``False`` reproduces the released code's ``|xhat|``.
        generator: a ``torch.Generator`` for the dropout draws (on the inputs' device);
            default: the layer's own, forked from the global RNG (see ``Stochastic``).
        sigma: sharpness of the quantizer's smooth BPDA surrogate (App. 8.3).
        quantize: ``False`` skips the activation/quantization step and outputs the sparse
            coefficients themselves (the "without A&Q" ablation of Table 2).
    """

    def __init__(
        self,
        dictionary: torch.Tensor,
        stride: int,
        top_t: int,
        dropout_p: float,
        eps: float,
        beta: float,
        keep_sign: bool = True,
        generator: torch.Generator | None = None,
        *,
        sigma: float = 0.25,
        quantize: bool = True,
    ) -> None:
        super().__init__()
        self.quantize = bool(quantize)
        if not isinstance(dictionary, torch.Tensor) or dictionary.dim() != 4 or not dictionary.is_floating_point():
            shape = tuple(dictionary.shape) if isinstance(dictionary, torch.Tensor) else type(dictionary).__name__
            raise InputError(f"dictionary must be a float (L, C, n, n) tensor of atoms, got {shape}")
        if dictionary.shape[2] != dictionary.shape[3]:
            raise InputError(f"dictionary atoms must be square n x n patches, got {tuple(dictionary.shape)}")
        atoms_count = dictionary.shape[0]
        check_positive_int(stride, "stride")
        check_positive_int(top_t, "top_t")
        if top_t > atoms_count:
            raise InputError(f"top_t={top_t} exceeds the dictionary's L={atoms_count} atoms; use top_t <= {atoms_count}")
        self.dropout_p = _number(dropout_p, "dropout_p", 0.0, 1.0, open_high=True)
        self.stride = stride
        self.top_t = top_t
        atoms = dictionary.detach().clone()
        self.register_buffer("atoms", atoms)
        self.quantizer = TernaryQuantizer(atoms.flatten(1).abs().sum(dim=1), eps, beta, sigma=sigma, keep_sign=keep_sign)
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise InputError(f"generator must be a torch.Generator, got {type(generator).__name__}")
            self._rl_generator = generator

    atoms: torch.Tensor

    @property
    def stochastic_active(self) -> bool:
        """Random unless ``dropout_p == 0``."""
        return self.dropout_p > 0

    @property
    def rowwise(self) -> bool:
        """Always: the dropout mask is i.i.d. per coefficient of the code's shape
        (:meth:`keep_mask`), so each row gets its own independent draw."""
        return True

    @property
    def num_atoms(self) -> int:
        """``L``, the code's channel count."""
        return int(self.atoms.shape[0])

    @property
    def in_channels(self) -> int:
        """``C``, the image channels the atoms expect."""
        return int(self.atoms.shape[1])

    @property
    def patch_size(self) -> int:
        """``n``."""
        return int(self.atoms.shape[2])

    def extra_repr(self) -> str:
        return (f"atoms={self.num_atoms}, channels={self.in_channels}, patch={self.patch_size}, "
                f"stride={self.stride}, top_t={self.top_t}, dropout_p={self.dropout_p}, quantize={self.quantize}")

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``xbar_ij = D^T x_ij`` for every patch: ``(N, L, m_h, m_w)`` (Sec. 2.2)."""
        check_images(x.detach(), channels=self.in_channels)
        n = self.patch_size
        if x.shape[-2] < n or x.shape[-1] < n:
            raise InputError(f"images of shape {tuple(x.shape)} are smaller than the {n}x{n} patches")
        return F.conv2d(x, self.atoms.to(dtype=x.dtype, device=x.device), stride=self.stride)

    def keep_mask(self, shape: torch.Size | tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The dropout draw for a code of ``shape``: 1 keeps a coefficient, 0 drops it (Eq. 2).

        One draw per forward; reused inside ``frozen`` (keyed by the shape), redrawn after
        ``resample``. All ones when ``dropout_p == 0`` (no randomness consumed).
        """
        if self.dropout_p == 0:
            return torch.ones(shape, device=device, dtype=dtype)
        p = self.dropout_p
        key = (tuple(shape), str(dtype))
        return self.draw(
            lambda g: (torch.rand(tuple(shape), generator=g, device=device) >= p).to(dtype),
            key=key,
            device=device,
        )

    def sparse_code(self, x: torch.Tensor) -> torch.Tensor:
        """Projection, top-T and dropout: the coefficients before quantization (Fig. 3 (iii)).

        Differentiable through the surviving coefficients only.
        """
        proj = self.project(x)
        idx = proj.detach().abs().topk(self.top_t, dim=1).indices
        top = torch.zeros_like(proj).scatter_(1, idx, 1.0)
        return proj * top * self.keep_mask(proj.shape, proj.device, proj.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` (N, C, H, W) in [0, 1] into a ternary code (N, L, m_h, m_w)."""
        code = self.sparse_code(x)
        return self.quantizer(code) if self.quantize else code
