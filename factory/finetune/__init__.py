"""LoRA fine-tuning of quantized models: IR-QLoRA's ICQ quantizer (icq.py) and IEC adapter (iec.py)."""
