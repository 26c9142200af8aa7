"""Real servers on this machine (Tansu, Ceph RGW, Triton) for the tests, benchmarks and the local stack."""
