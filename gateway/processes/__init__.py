"""One machine as worker processes: the supervisor that runs them, each worker's side of it,
how the workers reach each other, and the remote half of every feature they share. What
differs from one process is one :class:`~gateway.broker.topology.Topology` handed to the
broker (``gateway/processes/topology.py``)."""
