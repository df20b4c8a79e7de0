"""Value tests through ``measures.testing``: each ``cases_*.py`` module lists ``CASES`` (``ValueCase``s whose reference
values are worked out independently of the measures' code); ``test_values.py`` runs every check on each."""
