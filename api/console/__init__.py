"""The web console (``/console``): pages rendered by the API itself."""
