"""Multi-turn chat with the semantics of the official `chat.py`.

Each turn templates only the new user message. The first turn uses it as the prompt; later turns append it, minus
its leading BOS, to the previous prompt + answer with every EOS removed (earlier answers keep their `<|eot_id|>`).
Replies are decoded with `skip_special_tokens=True`. Sampler settings not passed come from the model's
`generation_config.json`; `OFFICIAL_CHAT_SETTINGS` (128 new tokens, 128 steps, block 32, greedy) are the official
chat.py's, to pass explicitly for the 8B models: `ChatSession(model, tokenizer, **OFFICIAL_CHAT_SETTINGS)`.
"""

import torch

from .generation.generation_parts import as_list
from .loading import model_device

OFFICIAL_CHAT_SETTINGS = {
    "max_new_tokens": 128,
    "steps": 128,
    "block_length": 32,
    "do_sample": False,
    "cfg_scale": 0.0,
}


class ChatSession:
    """Keeps the token history of a conversation; `send(message)` returns the model's reply text."""

    def __init__(self, model, tokenizer, **generate_kwargs) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.generate_kwargs = dict(generate_kwargs)
        self.history: torch.LongTensor | None = None  # prompt + answers so far, EOS removed

    def build_prompt(self, message: str) -> torch.LongTensor:
        """The next prompt: the templated user turn, appended (without its BOS) to the history."""
        turn = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        turn = torch.tensor(turn, dtype=torch.long)
        return turn if self.history is None else torch.cat([self.history, turn[1:]])

    def send(self, message: str, streamer=None) -> str:
        prompt = self.build_prompt(message)
        device = model_device(self.model)
        output = self.model.generate(prompt[None].to(device), streamer=streamer, **self.generate_kwargs)[0].cpu()
        answer = output[prompt.shape[0] :]
        eos_ids = torch.tensor(as_list(self.tokenizer.eos_token_id))
        self.history = output[~torch.isin(output, eos_ids)]
        return self.tokenizer.decode(answer, skip_special_tokens=True)

    def reset(self) -> None:
        self.history = None
