"""The matrix's ``executor: {ray: ...}`` settings (read by saebench.run.ray)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class StageResources(BaseModel):
    """What one Ray task of a stage asks the cluster for (Ray's own resource names)."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(1, ge=0, description="also the task's torch threads")
    num_gpus: float = Field(0, ge=0, description="give model stages a GPU (and the model options.device: cuda)")
    memory: int | None = Field(None, ge=0, description="bytes of RAM to reserve")


#: the stages the Ray executor fans out (saebench.ray_executor)
RAY_STAGES = ("activations", "train", "records", "latents", "cells")


class RaySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field("auto", description="auto: the running cluster; local: start one here; or HOST:PORT")
    resources: dict[Literal[RAY_STAGES], StageResources] = Field(default_factory=dict)  # type: ignore[valid-type]
    latents_per_task: PositiveInt = Field(64, description="latents per interpretability task")
    latents_per_records_task: PositiveInt = Field(
        16384, description="latents per latent-records task when interp.latents is a list or all (a sample: one task)"
    )
    max_retries: int = Field(3, ge=0, description="retries of a task whose worker died")

    def stage(self, name: str) -> StageResources:
        return self.resources.get(name, StageResources())  # type: ignore[call-overload]


class RayExecutor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ray: RaySpec = Field(default_factory=RaySpec)
