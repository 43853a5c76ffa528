"""Process management for Flower: everything that starts, patches or times Flower's processes.

* :mod:`~fedkd.runtime.launch`: the offline launcher (a simulation SuperLink on 127.0.0.1 with
  ``flwr run``, the offline environment, free ports, stopping a process tree);
* :mod:`~fedkd.runtime.deploy`: local deployments with TLS and node authentication
  (``python -m fedkd.runtime.deploy certs | node-keys``, :class:`LocalFederation`);
* :mod:`~fedkd.runtime.supernode`: Flower's SuperNode with its fixed waits shortened
  (``python -m fedkd.runtime.supernode``);
* :mod:`~fedkd.runtime.flower_patches`: the simulation engine's indexed message lookup;
* :mod:`~fedkd.runtime.trace`: the timing trace of a deployed message (``FEDKD_TRACE``).

No algorithm imports this package. Its submodules are not imported here: the light ClientApp
component (``client.entry``) imports :mod:`~fedkd.runtime.trace` alone.
"""
