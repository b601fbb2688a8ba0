"""The event and catalog contracts as Great Expectations suites, and the gate that splits a batch into accepted
and quarantined rows."""
