"""The value tests not yet converted to ``measures.testing`` cases (tests/values): measure name → pytest node id of
a test in ``tests/unit/measures/`` that calls the measure through the registry by that exact name (a quoted literal
in the test function's body or its ``@pytest.mark.parametrize``) and checks its value against an independently
computed one (a closed form on a hand-built network, a brute-force or dense computation, or the published formula
evaluated by hand from quantities the test computes itself). Parametrized tests are named without their ``[...]``
part. A converted measure leaves this table."""

VALUE_TESTS: dict[str, str] = {
    # outputs and optimization: a linear model by hand, a hand-made history, every minibatch enumerated
    # spectral: closed forms on a diagonal network; FFT variants against explicit convolution matrices
    # heavy tails: layers with known spectra against the plain WeightWatcher loop
    # activity–weight duality: explicit loops and a dense layer-Hessian eigenbasis
    "duality.mid.gap":
        "tests/unit/measures/test_duality.py::test_training_pair_measures_against_explicit_loops",
    "duality.mid.sharpness":
        "tests/unit/measures/test_duality.py::test_training_pair_measures_against_explicit_loops",
    "duality.mid.size":
        "tests/unit/measures/test_duality.py::test_training_pair_measures_against_explicit_loops",
    "duality.mid.gap_hessian":
        "tests/unit/measures/test_duality.py::test_training_pair_measures_against_explicit_loops",
    "oracle.duality_gap":
        "tests/unit/measures/test_duality.py::test_oracle_duality_gap_against_explicit_loops",
    # phases: hand-made histories with values derived by hand
    "phase.final_alignment":
        "tests/unit/measures/test_phases.py::test_final_alignment_is_the_last_rows_alignment",
    "phase.late_amplitude_sq":
        "tests/unit/measures/test_phases.py::test_late_amplitude_sq_averages_the_last_tenth_of_the_epochs",
    "phase.exploration_fraction":
        "tests/unit/measures/test_phases.py::test_exploration_fraction_on_a_decaying_amplitude_with_a_dip",
    "phase.mislabeled_fit_epoch_fraction":
        "tests/unit/measures/test_phases.py::test_mislabeled_fit_epoch_fraction_with_a_spike_the_median_removes",
    # variance–flatness: the analysis redone by hand from the recorded snapshots
    "vf.block_exponent":
        "tests/unit/measures/test_flatness.py::test_vf_block_measures_against_an_independent_recomputation",
    "vf.block_flatness_mean_log":
        "tests/unit/measures/test_flatness.py::test_vf_block_measures_against_an_independent_recomputation",
    "vf.block_weight_variance":
        "tests/unit/measures/test_flatness.py::test_vf_block_measures_against_an_independent_recomputation",
    # SGD effective regularization: dense Hessian and looped per-sample gradients
    "sgd.log_penalty_topk":
        "tests/unit/measures/test_sgd_regularization.py::"
        "test_registered_measures_against_dense_hessian_and_looped_gradients",
    "sgd.noise_anisotropy":
        "tests/unit/measures/test_sgd_regularization.py::"
        "test_registered_measures_against_dense_hessian_and_looped_gradients",
    "sgd.noise_curvature_exponent":
        "tests/unit/measures/test_sgd_regularization.py::"
        "test_registered_measures_against_dense_hessian_and_looped_gradients",
    "sgd.noise_to_loss":
        "tests/unit/measures/test_sgd_regularization.py::"
        "test_registered_measures_against_dense_hessian_and_looped_gradients",
    # added after Jiang et al.: Liang's closed form and per-sample autograd, a linear softmax by hand and finite
    # differences, known singular values, ECE bin by bin
    # replicates: outputs of linear models by hand, a loop over the line, a brute-force permutation search
    "replicate.disagreement":
        "tests/unit/measures/test_replicates.py::test_disagreement_and_tv_distance_by_hand",
    "replicate.tv_distance":
        "tests/unit/measures/test_replicates.py::test_disagreement_and_tv_distance_by_hand",
    "replicate.barrier":
        "tests/unit/measures/test_replicates.py::test_barrier_by_a_loop_over_the_line",
    "replicate.barrier_aligned":
        "tests/unit/measures/test_replicates.py::test_a_relabelled_copy_is_aligned_back_to_barrier_zero",
}
