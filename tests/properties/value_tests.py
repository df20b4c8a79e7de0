"""The value tests not yet converted to ``measures.testing`` cases (tests/values): measure name → pytest node id of
a test in ``tests/unit/measures/`` that calls the measure through the registry by that exact name (a quoted literal
in the test function's body or its ``@pytest.mark.parametrize``) and checks its value against an independently
computed one (a closed form on a hand-built network, a brute-force or dense computation, or the published formula
evaluated by hand from quantities the test computes itself). Parametrized tests are named without their ``[...]``
part. A converted measure leaves this table."""

VALUE_TESTS: dict[str, str] = {
    # outputs and optimization: a linear model by hand, a hand-made history, every minibatch enumerated
    "cross_entropy":
        "tests/unit/measures/test_margins_optimization.py::test_cross_entropy_and_entropy_by_hand",
    "output_entropy":
        "tests/unit/measures/test_margins_optimization.py::test_cross_entropy_and_entropy_by_hand",
    "inverse_margin":
        "tests/unit/measures/test_margins_optimization.py::test_inverse_margin_uses_the_interpolated_tenth_percentile",
    "steps_to_0.1":
        "tests/unit/measures/test_margins_optimization.py::test_step_counts_on_a_hand_made_history",
    "steps_0.1_to_0.01":
        "tests/unit/measures/test_margins_optimization.py::test_step_counts_on_a_hand_made_history",
    "grad_noise_final":
        "tests/unit/measures/test_margins_optimization.py::test_grad_noise_final_reads_the_training_batch_size",
    # spectral: closed forms on a diagonal network; FFT variants against explicit convolution matrices
    "log_prod_of_spec":
        "tests/unit/measures/test_spectral.py::test_spectral_measures_closed_form",
    "log_prod_of_spec_over_margin":
        "tests/unit/measures/test_spectral.py::test_spectral_measures_closed_form",
    "log_sum_of_spec":
        "tests/unit/measures/test_spectral.py::test_spectral_measures_closed_form",
    "log_sum_of_spec_over_margin":
        "tests/unit/measures/test_spectral.py::test_spectral_measures_closed_form",
    "log_spec_init_main":
        "tests/unit/measures/test_spectral.py::test_spectral_measures_closed_form",
    "log_spec_orig_main":
        "tests/unit/measures/test_spectral.py::test_spectral_measures_closed_form",
    "fro_over_spec":
        "tests/unit/measures/test_spectral.py::test_spectral_measures_closed_form",
    "dist_spec_init":
        "tests/unit/measures/test_spectral.py::test_spectral_measures_closed_form",
    "log_prod_of_spec_fft":
        "tests/unit/measures/test_spectral.py::"
        "test_every_fft_variant_on_a_convnet_against_explicit_convolution_matrices",
    "log_prod_of_spec_over_margin_fft":
        "tests/unit/measures/test_spectral.py::"
        "test_every_fft_variant_on_a_convnet_against_explicit_convolution_matrices",
    "log_sum_of_spec_fft":
        "tests/unit/measures/test_spectral.py::"
        "test_every_fft_variant_on_a_convnet_against_explicit_convolution_matrices",
    "log_sum_of_spec_over_margin_fft":
        "tests/unit/measures/test_spectral.py::"
        "test_every_fft_variant_on_a_convnet_against_explicit_convolution_matrices",
    "log_spec_init_main_fft":
        "tests/unit/measures/test_spectral.py::"
        "test_every_fft_variant_on_a_convnet_against_explicit_convolution_matrices",
    "log_spec_orig_main_fft":
        "tests/unit/measures/test_spectral.py::"
        "test_every_fft_variant_on_a_convnet_against_explicit_convolution_matrices",
    "fro_over_spec_fft":
        "tests/unit/measures/test_spectral.py::"
        "test_every_fft_variant_on_a_convnet_against_explicit_convolution_matrices",
    "dist_spec_init_fft":
        "tests/unit/measures/test_spectral.py::"
        "test_every_fft_variant_on_a_convnet_against_explicit_convolution_matrices",
    # heavy tails: layers with known spectra against the plain WeightWatcher loop
    "alpha_mean":
        "tests/unit/measures/test_spectral.py::test_heavy_tail_means_over_layers_against_the_plain_loop",
    "alpha_weighted":
        "tests/unit/measures/test_spectral.py::test_heavy_tail_means_over_layers_against_the_plain_loop",
    "log_spectral_norm":
        "tests/unit/measures/test_spectral.py::test_heavy_tail_means_over_layers_against_the_plain_loop",
    # PAC-Bayes and sharpness: closed-form σ / α, then the bound terms by hand; fixed radii in closed form
    "pacbayes.init":
        "tests/unit/measures/test_sharpness.py::test_pacbayes_measures_on_a_model_with_closed_form_sigma",
    "pacbayes.orig":
        "tests/unit/measures/test_sharpness.py::test_pacbayes_measures_on_a_model_with_closed_form_sigma",
    "pacbayes.flatness":
        "tests/unit/measures/test_sharpness.py::test_pacbayes_measures_on_a_model_with_closed_form_sigma",
    "pacbayes.mag.init":
        "tests/unit/measures/test_sharpness.py::test_pacbayes_measures_on_a_model_with_closed_form_sigma",
    "pacbayes.mag.orig":
        "tests/unit/measures/test_sharpness.py::test_pacbayes_measures_on_a_model_with_closed_form_sigma",
    "pacbayes.mag.flatness":
        "tests/unit/measures/test_sharpness.py::test_pacbayes_measures_on_a_model_with_closed_form_sigma",
    "sharpness.init":
        "tests/unit/measures/test_sharpness.py::test_sharpness_search_measures_on_a_model_with_closed_form_alpha",
    "sharpness.orig":
        "tests/unit/measures/test_sharpness.py::test_sharpness_search_measures_on_a_model_with_closed_form_alpha",
    "sharpness.flatness":
        "tests/unit/measures/test_sharpness.py::test_sharpness_search_measures_on_a_model_with_closed_form_alpha",
    "sharpness.mag.init":
        "tests/unit/measures/test_sharpness.py::test_sharpness_search_measures_on_a_model_with_closed_form_alpha",
    "sharpness.mag.orig":
        "tests/unit/measures/test_sharpness.py::test_sharpness_search_measures_on_a_model_with_closed_form_alpha",
    "sharpness.mag.flatness":
        "tests/unit/measures/test_sharpness.py::test_sharpness_search_measures_on_a_model_with_closed_form_alpha",
    "sharpness.l2":
        "tests/unit/measures/test_sharpness.py::test_fixed_radius_sharpness_on_a_linear_model",
    "sharpness.linf":
        "tests/unit/measures/test_sharpness.py::test_fixed_radius_sharpness_on_a_linear_model",
    "sharpness.adaptive.l2":
        "tests/unit/measures/test_sharpness.py::test_fixed_radius_sharpness_on_a_linear_model",
    "sharpness.adaptive.linf":
        "tests/unit/measures/test_sharpness.py::test_fixed_radius_sharpness_on_a_linear_model",
    # after Andriushchenko et al. 2023: m-sharpness in closed form per batch on a linear model; the average case
    # against a Monte Carlo redone draw by draw
    "sharpness.adaptive.m.linf":
        "tests/unit/measures/test_batch_sharpness.py::test_m_sharpness_on_a_linear_model",
    "sharpness.adaptive.m.l2":
        "tests/unit/measures/test_batch_sharpness.py::test_m_sharpness_on_a_linear_model",
    "sharpness.adaptive.avg.l2":
        "tests/unit/measures/test_batch_sharpness.py::test_average_case_against_an_independent_monte_carlo",
    "sharpness.adaptive.avg.linf":
        "tests/unit/measures/test_batch_sharpness.py::test_average_case_against_an_independent_monte_carlo",
    "sharpness.avg.l2":
        "tests/unit/measures/test_batch_sharpness.py::test_average_case_against_an_independent_monte_carlo",
    # Hessian: dense Hessians and closed-form softmax-regression Hessians
    "hessian.top_eig":
        "tests/unit/measures/test_hessian.py::test_top_eigenvalues_match_dense",
    "hessian.trace":
        "tests/unit/measures/test_hessian.py::test_trace_of_relu_mlps_is_exact",
    "hessian.logdet_topk":
        "tests/unit/measures/test_hessian.py::test_logdet_topk_leaves_out_null_and_negative_directions",
    # added after Jiang et al.: Liang's closed form and per-sample autograd, a linear softmax by hand and finite
    # differences, known singular values, ECE bin by bin
    "fisher_rao_norm":
        "tests/unit/measures/test_sensitivity_rank.py::test_fisher_rao_norm_equals_liangs_closed_form_on_a_bias_free_relu_net",
    "input_jacobian_norm":
        "tests/unit/measures/test_sensitivity_rank.py::test_input_jacobian_norm_closed_form_for_a_linear_softmax",
    "weight_effective_rank":
        "tests/unit/measures/test_sensitivity_rank.py::test_weight_effective_rank_closed_form_on_known_singular_values",
    "feature_effective_rank":
        "tests/unit/measures/test_sensitivity_rank.py::test_feature_effective_rank_reads_the_last_layers_input",
    "train_confidence":
        "tests/unit/measures/test_sensitivity_rank.py::test_train_confidence_and_ece_by_hand",
    "train_ece":
        "tests/unit/measures/test_sensitivity_rank.py::test_train_confidence_and_ece_by_hand",
    # relative flatness: a dense autograd Hessian of the last layer; margin distribution: a linear softmax by hand
    "relative_flatness":
        "tests/unit/measures/test_relative_flatness_margin_distribution.py::test_relative_flatness_against_a_dense_autograd_hessian",
    "margin_dist.median":
        "tests/unit/measures/test_relative_flatness_margin_distribution.py::test_margin_distribution_closed_form_for_a_linear_softmax",
    "margin_dist.q1":
        "tests/unit/measures/test_relative_flatness_margin_distribution.py::test_margin_distribution_closed_form_for_a_linear_softmax",
    "margin_dist.q3":
        "tests/unit/measures/test_relative_flatness_margin_distribution.py::test_margin_distribution_closed_form_for_a_linear_softmax",
    "sotl":
        "tests/unit/measures/test_margins_optimization.py::test_sotl_sums_the_hand_made_training_curve",
}
