"""Work-pool base job templates in configs/prefect render into GPU-ready job specs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prefect.utilities.templating import apply_values

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((ROOT / "configs" / "prefect").glob("*.json"))


def _defaults(template: dict) -> dict:
    return {k: v.get("default") for k, v in template["variables"]["properties"].items()}


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_placeholder_is_a_declared_variable(path):
    template = json.loads(path.read_text())
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    declared = set(template["variables"]["properties"])
    assert used <= declared, used - declared
    for name, spec in template["variables"]["properties"].items():
        assert spec.get("description"), name


def test_kubernetes_template_renders_a_gpu_job():
    template = json.loads((ROOT / "configs" / "prefect" / "kubernetes-gpu.json").read_text())
    job = apply_values(template["job_configuration"], {**_defaults(template), "gpu_count": 2})
    pod = job["job_manifest"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["image"] == "feinschliff:latest"
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "feinschliff-cache"
    # the image runs as uid 1000 (Dockerfile USER): the cache volume must be writable for it
    assert pod["securityContext"]["fsGroup"] == 1000
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER 1000:1000" in dockerfile


def test_docker_template_requests_gpus():
    template = json.loads((ROOT / "configs" / "prefect" / "docker-gpu.json").read_text())
    job = apply_values(template["job_configuration"], _defaults(template))
    request = job["container_create_kwargs"]["device_requests"][0]
    assert request["Capabilities"] == [["gpu"]] and request["Count"] == -1
    assert "/srv/feinschliff:/cache" in job["volumes"]
