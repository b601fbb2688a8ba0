"""shoprec's Feast repo: declarative definitions split by kind, and one feature_store.yaml per environment.

Other teams can use it with the Feast CLI, e.g. `feast -c features/repo -f
features/repo/environments/embedded/feature_store.yaml serve` (with SHOPREC_HOME exported).
"""
