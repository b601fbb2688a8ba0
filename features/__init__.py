"""The Feast repo and the pandas code that computes user and item features from the event lake (issue 3).

Every Feast import in this project comes through this package, which first turns typeguard's @typechecked into a
no-op, as `python -O` does. Feast decorates its classes with it, and it re-parses and recompiles their source at
import: 2.5-3 s of every process that imports Feast (each Airflow task, each service worker, the feature server),
for run-time checks of Feast's own arguments (typeguard serves no other package here). `python -c "import feast"`:
5.1-5.6 s without this, 2.8-3.0 s with it, quiet 2-core machine.
"""

import typeguard


def _unchecked(target=None, **_options):
    return target if target is not None else _unchecked


typeguard.typechecked = _unchecked
