"""The preflight report as a short text for the console."""

from typing import Any

GB = 2**30


def _steps(steps: list[int], shown: int = 8) -> str:
    if len(steps) <= shown:
        return ", ".join(map(str, steps)) or "none"
    return f"{', '.join(map(str, steps[:shown - 2]))}, ..., {steps[-1]} ({len(steps)} in all)"


def _lengths(name: str, stats: dict[str, Any]) -> str:
    line = f"{name} tokens p50/p90/p99/max {stats['p50']}/{stats['p90']}/{stats['p99']}/{stats['max']}"
    if "max_length" in stats:
        line += f", {stats['truncated_share']:.1%} truncated at {stats['max_length']}"
    return line


def _fits(rows: list[dict[str, Any]]) -> list[str]:
    """``fits a 24 GB GPU: 4bit + checkpointing 11.2 GiB (this run); ...``: one line per GPU size."""
    if not rows:
        return []
    lines = []
    for gpu in rows[0]["fits"]:
        options = [f"{r['weights']}{' + checkpointing' if r['gradient_checkpointing'] else ''}"
                   f" {r['estimated_peak_bytes'] / GB:.1f} GiB{' (this run)' if r['configured'] else ''}"
                   for r in rows if r["fits"][gpu]]
        lines.append(f"           fits a {gpu} GPU: " + ("; ".join(options) if options else
                                                          "no (none of 4-bit, gradient checkpointing, both)"))
    return lines


def summary(report: dict[str, Any]) -> str:
    lines = []
    if model := report.get("model"):
        modules = ", ".join(f"{k} x{v}" for k, v in model["lora_modules"].items())
        lines += [f"model      {model['pretrained']} ({model['family']}, config: {model['config_source']})",
                  f"           LoRA on {modules}: {model['trainable_parameters']:,} trainable of "
                  f"{model['total_parameters']:,} parameters ({model['trainable_percent']:.3f}%)"]
    if data := report.get("data"):
        skipped = ", ".join(f"{k} {v:,}" for k, v in data["skipped"].items()) or "none"
        lines.append(f"data       {data['records_read']:,} records read, {data['records_kept']:,} kept; skipped: {skipped}")
        if data.get("sampled"):
            lines.append(f"           ({data['sampled']})")
        lines.append("           splits used " + ", ".join(f"{k} {v:,}" for k, v in data["splits_used"].items()))
        if refused := data.get("too_long_refused"):
            lines.append("           refused as longer than data.max_length after the chat template: " +
                         ", ".join(f"{k} {v:,}" for k, v in refused.items()))
        for key, name in (("source_tokens", "source"), ("target_tokens", "target"), ("caption_tokens", "caption")):
            if key in data:
                lines.append(f"           {_lengths(name, data[key])}")
        lines.append(f"           tokenizer: {data['tokenizer']}")
    if schedule := report.get("schedule"):
        lines += [f"schedule   batch {schedule['batch_size']} x accumulation {schedule['accumulate_grad_batches']} x "
                  f"{schedule['devices'] * schedule['num_nodes']} device(s) = effective batch "
                  f"{schedule['effective_batch']}; {schedule['optimizer_steps_per_epoch']:,} optimizer steps per "
                  f"epoch, {schedule['optimizer_steps_total']:,} in all ({schedule['epochs']} epoch(s))",
                  f"           validation + checkpoint at steps {_steps(schedule['checkpoint_steps'])}; "
                  f"monitor {schedule['monitor']} ({schedule['mode']}), {schedule['checkpoints_kept']} kept"]
        if schedule.get("early_stopping_patience") is not None:
            lines.append(f"           early stopping after {schedule['early_stopping_patience']} validations "
                         "without improvement may end it sooner")
        lines += [f"           note: {note}" for note in schedule.get("notes", [])]
    if validation := report.get("validation"):
        if "generated_tokens_per_round" in validation:
            size = (f"{validation['samples']} samples x {validation['beams']} beam(s) x "
                    f"{validation['max_new_tokens']} new tokens")
        else:
            size = f"{validation['prompts']} prompts x 1 image x {validation['inference_steps']} steps"
        lines.append(f"validation {size}, {validation['rounds']} round(s): "
                     f"{validation['validation_share_by_flops']:.1%} of the run's FLOPs (more of its time)")
    if memory := report.get("memory"):
        device = memory.get("device_memory_bytes")
        against = (f" of {device / GB:.1f} GiB ({memory['device_memory_source']})" if device
                   else f"; device memory {memory['device_memory_source']}")
        lines.append(f"memory     ~{memory['estimated_peak_bytes'] / GB:.2f} GiB{against}: base "
                     f"{memory['base_weights_bytes'] / GB:.2f}, LoRA+AdamW {memory['adapter_and_optimizer_bytes'] / GB:.2f}, "
                     f"activations {memory['activations_bytes'] / GB:.2f} ({memory['precision']}"
                     f"{', ' + memory['quantization'] if memory['quantization'] else ''})")
        lines += _fits(memory.get("gpu_fits", []))
    lines += [f"warning    {w}" for w in report.get("warnings", [])]
    lines += [f"problem    {p}" for p in report.get("problems", [])]
    lines.append(f"preflight  {'FAILED: ' + str(len(report['problems'])) + ' problem(s)' if report['problems'] else 'passed'}"
                 f" in {report.get('seconds', 0)} s")
    return "\n".join(lines)
