"""The ``chatfleet`` command-line client: it talks to the API over HTTP and runs on neither side
of the queue."""
