"""What the text families share, as one class whose instances differ only in data (LitGPT's way: family
differences as values, not subclasses): seq2seq and causal are two ``TextFamily`` objects."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import GenerationConfig

from src.families.protocol import ModelPlan
from src.modules.lora import adapted_module_kinds, lora_text_model
from src.preflight.cost import text_validation_cost
from src.preflight.data import STANDIN_VOCAB, plan_text_data
from src.preflight.memory import meta_tensor, quantized_base_bytes
from src.pretrained.architecture import architecture_config, hf_config, untie_output_embeddings
from src.pretrained.loading import base_load_kwargs, resolve_pretrained
from src.errors import UserError

STANDIN_MAX_LENGTH = 100_000  # a stand-in measures lengths: it must not truncate them


@dataclass(frozen=True, eq=False)
class TextFamily:
    """A text family: any Hugging Face ``auto_class`` model trained with peft's ``task_type`` on conversations,
    encoded by ``encoder_class``.

    ``train_tokenizer_fn(texts, vocab_size, model_max_length)`` trains a tokenizer of this kind (stand-ins for
    preflight, random-init dry runs); ``special_token_ids(tokenizer)`` are the config ids such a tokenizer
    dictates; ``probe_inputs(batch, source, target)`` the meta batch of preflight's memory probe;
    ``generating_prefixes`` the parameters each generated token passes through (empty: all of them).
    """

    name: str
    description: str
    module_class: type
    auto_class: type
    task_type: str
    encoder_class: type
    train_tokenizer_fn: Callable[..., Any]
    tokenizer_description: str
    special_token_ids: Callable[[Any], dict[str, int]]
    probe_inputs: Callable[[int, int, int], dict[str, torch.Tensor]]
    default_max_positions: int
    generating_prefixes: tuple[str, ...] = ()
    random_init_version: int = 1
    encoder_options: Callable[[DictConfig], dict[str, Any]] = field(default=lambda model_cfg: {})
    kind: str = "text"
    answers_conversations: bool = False  # through a chat template: served at OpenAI's /v1/chat/completions
    hub_marker: str = "config.json"
    tokenizer_subfolder: str | None = None

    # -- model and data ------------------------------------------------------------------------------------------
    def encoder(self, tokenizer, lengths: dict[str, int], model_cfg: DictConfig | None = None):
        """The sample encoder for this family's tokenizer at the data's length limits."""
        return self.encoder_class(tokenizer, **lengths, **self.encoder_options(model_cfg or DictConfig({})))

    def connect(self, datamodule, tokenizer, model_cfg: DictConfig) -> None:
        datamodule.connect(self.encoder(tokenizer, datamodule.lengths, model_cfg))

    # -- the real architecture without weights ---------------------------------------------------------------
    def meta_model(self, pretrained: str, dtype: str | None = None) -> torch.nn.Module:
        """The architecture on the meta device, its weights in ``dtype`` (``model.dtype``; None: float32)."""
        published = architecture_config(pretrained)[0]
        config = hf_config(published, pretrained)
        try:
            with torch.device("meta"):
                model = self.auto_class.from_config(config, **base_load_kwargs(None, dtype))
        except ValueError as err:  # e.g. a causal LM's config given as seq2seq
            raise UserError(f"'{pretrained}' ({config.model_type}) is not {self.description}: "
                            f"{str(err).splitlines()[0]} — pick the model config of its family") from err
        untie_output_embeddings(model, published)
        return model

    def plan(self, model_cfg: DictConfig) -> ModelPlan:
        pretrained = resolve_pretrained(model_cfg.pretrained)
        source = architecture_config(pretrained)[1]
        base = self.meta_model(pretrained, model_cfg.get("dtype"))
        network = lora_text_model(base, instantiate(model_cfg.lora), self.task_type, pretrained)
        trainable, total = network.get_nb_trainable_parameters()  # peft's own count, as training logs it
        return ModelPlan(self, pretrained, source, trainable, total,
                         adapted_module_kinds(network.base_model.targeted_module_names), network)

    # -- preflight -----------------------------------------------------------------------------------------------
    def memory_probe(self, plan: ModelPlan, batch: int, data: dict[str, Any], gradient_checkpointing: bool):
        base = plan.network.get_base_model()
        if gradient_checkpointing:
            base.gradient_checkpointing_enable()
            base.enable_input_require_grads()
        else:  # preflight probes both ways on one network
            base.gradient_checkpointing_disable()
            base.disable_input_require_grads()
        source = int(data["source_tokens"].get("max_length") or data["source_tokens"]["max"])
        target = int(data["target_tokens"].get("max_length") or data["target_tokens"]["max"])
        shape = {"batch": batch, "source_tokens": source, "target_tokens": target}
        if row := data.get("longest_row_tokens"):  # a decoder's row: prompt and answer in one sequence
            source, target, shape = row, 0, {"batch": batch, "row_tokens": row}
        inputs = self.probe_inputs(batch, source, target)
        return (lambda: plan.network(**inputs).loss), shape

    def base_weight_bytes(self, plan: ModelPlan, quantization: str | None) -> int:
        if quantization:
            return quantized_base_bytes(plan, quantization)
        # frozen weights in model.dtype (mixed precision keeps float32 weights float32); tied ones counted once
        return sum(p.numel() * p.element_size() for p in plan.network.parameters() if not p.requires_grad)

    def plan_data(self, cfg: DictConfig, pretrained: str) -> dict[str, Any]:
        return plan_text_data(cfg, self, pretrained)

    def generating_parameters(self, plan: ModelPlan) -> int:
        """Parameters each generated token passes through (a seq2seq model's decoder and LM head)."""
        if not self.generating_prefixes:
            return plan.total
        base = plan.network.get_base_model()
        return sum(p.numel() for n, p in base.named_parameters() if n.startswith(self.generating_prefixes))

    def validation_cost(self, plan: ModelPlan, cfg: DictConfig, data: dict[str, Any], schedule: dict[str, Any],
                        memory: dict[str, Any]) -> dict[str, Any]:
        return text_validation_cost(plan, cfg, data, schedule, memory, self.generating_parameters(plan))

    def train_tokenizer(self, texts: Iterable[str], vocab_size: int = STANDIN_VOCAB,
                        model_max_length: int = STANDIN_MAX_LENGTH) -> tuple[Any, str]:
        return (self.train_tokenizer_fn(iter(texts), vocab_size, model_max_length),
                self.tokenizer_description.format(vocab_size=vocab_size) + " trained on the data")

    def generation_arguments(self) -> tuple[set[str], str]:
        return set(GenerationConfig().to_dict()), "transformers.GenerationConfig"

    def preflight_warnings(self, model_cfg: DictConfig) -> list[str]:
        return []


def encoder_decoder_probe(batch: int, source: int, target: int) -> dict[str, torch.Tensor]:
    # no attention mask: on meta, the mask helpers would read its values (all ones: same memory)
    return {"input_ids": meta_tensor(batch, source), "labels": meta_tensor(batch, target)}


def decoder_only_probe(batch: int, source: int, target: int) -> dict[str, torch.Tensor]:
    ids = meta_tensor(batch, source + target)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}  # as training passes them
