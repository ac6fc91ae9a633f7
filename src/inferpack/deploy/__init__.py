"""Kubernetes/EKS: pure rendering (plan + settings -> manifests), the kustomize writer, the kubectl driver,
eksctl/Karpenter cluster configs, and the endpoints file the router reads."""

from __future__ import annotations

from inferpack.deploy.endpoints import ServerEndpoints, load_endpoints, save_endpoints
from inferpack.deploy.options import HpaOptions, RenderOptions
from inferpack.deploy.render import render_bench_job, render_manifests

__all__ = [
    "HpaOptions",
    "RenderOptions",
    "ServerEndpoints",
    "load_endpoints",
    "render_bench_job",
    "render_manifests",
    "save_endpoints",
]
