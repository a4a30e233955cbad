"""ActQuant quantizer: accumulate, then solve, return results.

Modules: ``types`` (GGML type table, bpw, eligibility), ``hsic`` (HSIC / HBaR scores, stage 1),
``allocate`` (greedy + exact bit allocation), ``fisher`` (Action-Mixed Fisher, stage 2), ``refine``
(Q4_K / Q2_K block refinement), ``importance`` (imatrix-style importance and baseline allocators),
``plan`` (the QuantPlan artifact).
"""
