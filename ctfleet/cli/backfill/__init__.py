"""``ctfleet backfill DIR``: hospital IT pushes an archive of studies through the API.

scan (:mod:`.scan`: folders, zip files, a DICOMDIR; headers only, no pixel decode) ->
journal (:mod:`.journal`: SQLite on the hospital's machine; every file, every study,
every upload id, committed as it happens, so a killed run resumes) -> send
(:mod:`.sender`: presigned POSTs with bounded concurrency, an optional bandwidth cap,
retries and renewal of expired URLs) -> the local manifest (:mod:`.manifest`: the CSV
that maps pseudonymous results back to the hospital's patients; it never leaves
their machine). :mod:`.command` wires them to the console.
"""
