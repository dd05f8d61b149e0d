"""Analyses of trained and random networks.

From Xu & Yang, "Understanding Adversarial Robustness from Feature Maps of Convolutional
Layers" (``papers/feature-map-strides``):

- :func:`anti_perturbation_ratio`: the fraction of predictions a PGD attack leaves unchanged,
  per radius (Sec. IV-B, Table II);
- :func:`toy_disturbance` and :func:`plot_toy_disturbance`: the toy experiment on a random
  4-layer CNN, output disturbance vs feature size under average and max pooling (Sec. III-B,
  Fig. 2; Appendix A, Fig. 8);
- :func:`cost`: FLOPs, activation memory and parameters of one forward (Sec. IV-B, Fig. 7).

From the gradient-norm thesis (``papers/gradient-norm-regularization``),
:mod:`~robustlab.analysis.gradients`: input-gradient norms split by PGD success (Table 4.1),
saliency/edge correlation (Table 5.1), Hessian power iteration and geometry statistics
(Table A.1), local linearity error (Eq. A.1), the attack-direction profile (Fig. A.3), robust
accuracy vs eps (Fig. 4.1) and the gradient grid (Fig. 1.1).

From Ma et al., "Adversarial Robustness via Deformable Convolution with Stochasticity"
(``papers/deformable-conv-stochasticity``), :mod:`~robustlab.analysis.dcs`: the gradient cosine
similarity between inference paths (Eq. 6, Fig. 4b) and the bounds on ``n`` (Eq. 8, 11, 12).

From the sparse-randomized-encoder paper (``papers/sparse-randomized-encoder``),
:mod:`~robustlab.analysis.sparse`: atom correlations vs first-layer filter activations
(App. 8.1, Fig. 2), the expected fraction of corrupted patches (App. 8.5, Fig. 4) and the
autoencoder image grid (App. 8.8, Fig. 9).

This package imports ``core`` and ``attacks`` only (the house plan).
"""

from .anti_perturbation import AntiPerturbationResult, anti_perturbation_ratio
from .cost import Cost, cost
from .dcs import (
    KernelPathLayer,
    NBounds,
    gradient_cosine,
    lemma1_upper_bound,
    lemma1_upper_bound_tight,
    lemma2_lower_bound,
    n_bounds,
    position_classes,
    split_gradient_similarity,
)
from .gradients import (
    GeometryStats,
    GradientNormStats,
    analyze_gradients,
    geometry_stats,
    gradient_norm_stats,
    hessian_top_eigenvalue,
    local_linearity_error,
    plot_gradient_grid,
    robust_accuracy_curve,
    saliency_edge_correlation,
)
from .sparse import (
    PatchCorrelations,
    atom_filter_correlations,
    autoencoder_grid,
    corrupted_patch_fraction,
    plot_correlation_histogram,
    plot_corrupted_fraction_histogram,
)
from .toy import (
    ACTIVATIONS,
    BASES,
    FIG8_INITS,
    INITS,
    POOLINGS,
    TOY_WIDTHS,
    ToyRecord,
    plot_toy_disturbance,
    toy_cnn,
    toy_disturbance,
)

__all__ = [
    "ACTIVATIONS",
    "BASES",
    "FIG8_INITS",
    "INITS",
    "POOLINGS",
    "TOY_WIDTHS",
    "AntiPerturbationResult",
    "Cost",
    "KernelPathLayer",
    "NBounds",
    "GeometryStats",
    "GradientNormStats",
    "ToyRecord",
    "analyze_gradients",
    "anti_perturbation_ratio",
    "cost",
    "gradient_cosine",
    "lemma1_upper_bound",
    "lemma1_upper_bound_tight",
    "lemma2_lower_bound",
    "n_bounds",
    "position_classes",
    "split_gradient_similarity",
    "geometry_stats",
    "gradient_norm_stats",
    "hessian_top_eigenvalue",
    "local_linearity_error",
    "plot_gradient_grid",
    "robust_accuracy_curve",
    "saliency_edge_correlation",
    "plot_toy_disturbance",
    "toy_cnn",
    "toy_disturbance",
    "PatchCorrelations",
    "atom_filter_correlations",
    "autoencoder_grid",
    "corrupted_patch_fraction",
    "plot_correlation_histogram",
    "plot_corrupted_fraction_histogram",
]
