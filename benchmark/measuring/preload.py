"""What the measure workers' fork server imports once (``benchmark.measuring.isolation``): genbench's measuring
stage and every built-in measure family, so that each worker it forks starts with them loaded."""
import sklearn.model_selection  # noqa: F401 — the datasets' stratified subsets (benchmark.zoo.datasets), ~1 s

import measures
from benchmark.measuring import early, jobs  # noqa: F401 — imported for the workers

measures.REGISTRY.names()  # the registry imports its built-in families on first use
