"""The stream worker: a Faust app whose agents keep stock (``stock/``) and counters (``counters/``) in Redis."""
