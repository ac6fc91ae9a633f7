"""Kubernetes/EKS: pure rendering (plan + settings -> manifests), the kustomize writer, the kubectl driver,
eksctl/Karpenter cluster configs. The endpoints file the router reads is `inferpack.endpoints` (shared with
the fleet and the load tester); its names are re-exported here."""

from __future__ import annotations

from inferpack.deploy.options import HpaOptions, RenderOptions
from inferpack.deploy.render import render_bench_job, render_manifests
from inferpack.endpoints import ServerEndpoints, load_endpoints, save_endpoints

__all__ = [
    "HpaOptions",
    "RenderOptions",
    "ServerEndpoints",
    "load_endpoints",
    "render_bench_job",
    "render_manifests",
    "save_endpoints",
]
