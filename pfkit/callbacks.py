"""Lightning callbacks for real-scale runs (configs/gpu/): switched on from a config, no module code changes."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback


class GradientCheckpointing(Callback):
    """Turn on activation (gradient) checkpointing in every trainable Hugging Face model of the module.

    Trades ~30% more compute for activations that no longer grow with depth, which is what lets a 1.5-7B
    policy train with long responses on one GPU's memory. ``use_reentrant=False`` is the form that works
    with DDP/FSDP and with inputs that do not require grad. Sampling runs the model in eval mode, where
    Hugging Face models keep their KV cache, so rollouts are not slowed. (GRPO: set ``shared_prefix: false``,
    since checkpointed training-mode forwards return no cache.)
    """

    def __init__(self, use_reentrant: bool = False):
        self.use_reentrant = use_reentrant
        self.enabled: list[str] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        try:
            from transformers import PreTrainedModel
        except ImportError:  # pragma: no cover - transformers is a dependency
            return
        for name, module in pl_module.named_modules():
            if (isinstance(module, PreTrainedModel)
                    and getattr(module, "supports_gradient_checkpointing", False)
                    and any(p.requires_grad for p in module.parameters())
                    and not getattr(module, "is_gradient_checkpointing", False)):
                kwargs = {"use_reentrant": self.use_reentrant}
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
                self.enabled.append(name or "<root>")
