"""The shared vocabulary of shoprec: settings, the event contract and the storage layout.

Every stage imports from here; this package imports no other shoprec package.
"""
