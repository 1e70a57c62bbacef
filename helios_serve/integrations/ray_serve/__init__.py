"""Scale out with Ray Serve: engine replicas across GPUs and machines behind one endpoint.

Entry point: ``helios-serve serve MODEL --replicas N`` (launch.py). Ray is imported only here.
"""
