"""What every workflow job runs on: its command line and exit (``cli``), a clear error
(``errors.UserError``: what, where, what to do), logging with progress (``logs``), atomic outputs
(``atomic``), exclusive locks naming their holder (``locks``) and per-job GPU leases (``gpu``).

The ground floor: these modules import nothing else of deepbc.
"""
