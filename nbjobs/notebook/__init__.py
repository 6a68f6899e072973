"""How jobs look in a notebook: HTML reprs, the live ipywidgets watch, pandas frames.

``display`` renders a job, a list of jobs and the schedules as HTML (the dashboard
borrows its pills, progress bars and time formats); ``widgets`` is ``h.watch()``;
``frames`` builds the DataFrames of ``app.jobs_frame()``, ``app.history_frame()`` and
``app.schedules_frame()``.  None of them imports the App: they get a store, rows or a
handle, typed by the small protocols in :mod:`.display`.  Importing this package
imports none of its modules (``ipywidgets`` and ``pandas`` load on first use).
"""
