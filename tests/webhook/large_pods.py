"""The 80-container pod of case 21: 20 init and 60 regular containers, each with
10 env vars (one from a Secret) and 3 mounts, and 63 volumes (~400 KiB)."""

from __future__ import annotations

from typing import Any


def _container(name: str, image: str, index: int) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": f"SETTING_{n}", "value": f"value-{index}-{n}-" + "x" * 400}
        for n in range(9)
    ]
    env.append(
        {
            "name": "API_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "ci-secrets", "key": "token"}},
        }
    )
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "volumeMounts": [
            {"name": f"work-{index % 20}", "mountPath": "/work"},
            {"name": f"config-{index % 20}", "mountPath": "/config", "readOnly": True},
            {
                "name": "kube-api-access-abcde",
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "readOnly": True,
            },
        ],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "256Mi"},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }


def large_pod(namespace: str = "ci") -> dict[str, Any]:
    volumes: list[dict[str, Any]] = []
    for n in range(20):
        volumes.append({"name": f"work-{n}", "emptyDir": {}})
        volumes.append(
            {"name": f"config-{n}", "configMap": {"name": f"step-config-{n}"}}
        )
    volumes += [
        {"name": f"secret-{n}", "secret": {"secretName": f"ci-secret-{n}"}}
        for n in range(22)
    ]
    volumes.append(
        {
            "name": "kube-api-access-abcde",
            "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]},
        }
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "runner-build-", "namespace": namespace},
        "spec": {
            "initContainers": [
                _container(f"init-{n:02d}", "registry.example.com/ci/init:1.0", n)
                for n in range(20)
            ],
            "containers": [
                _container(f"step-{n:02d}", "registry.example.com/ci/step:1.0", n)
                for n in range(60)
            ],
            "volumes": volumes,
            "restartPolicy": "Never",
            "serviceAccountName": "runner",
        },
    }
