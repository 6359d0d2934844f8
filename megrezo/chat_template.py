"""The chat template the project ships with checkpoints it creates (the release's own was not recovered).

A conversation is rendered as `<|role_start|>{role}<|role_end|>{content}<|turn_end|>` per turn, with no BOS. A
default system turn is added when the conversation has none. A turn whose content is a dict gets one
`(<image>./</image>)` line per image, then `Audio {k}: (<audio>./</audio>)` per audio item (k counts the
conversation's audio items from 1), then its text; the processor later expands those placeholders into filler
tokens. A conversation that breaks the turn order is refused by the template itself (TURN_ORDER_CHECK).

The template can be given the media themselves, as the authors' vLLM example does
(`tokenizer.apply_chat_template(conversation, ...)` with a PIL image in the content). Only a Python list holds
several items; any other value (a path, a PIL image, a numpy array or torch tensor, an `(array, rate)` tuple, bytes,
a dict) is one item. Jinja has no list test, so a list is recognised as the sequence that is neither a string, a
mapping, an array (`ndim`) nor bytes (`decode`) and has both `copy` and `count` (a tuple has no `copy`).
"""

DEFAULT_SYSTEM_PROMPT = "你是Megrez-3B-Instruct，将针对用户的问题给出详细的、积极的回答。"

TURN_ORDER_CHECK = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('messages[' ~ loop.index0 ~ ']: unknown role \\'' ~ message['role'] ~ '\\'; expected one of "
    "system, user, assistant') -}}"
    "{%- elif message['role'] == 'assistant' and loop.first -%}"
    "{{- raise_exception('messages[0]: a conversation cannot start with an assistant turn') -}}"
    "{%- elif message['role'] == 'assistant' and loop.previtem['role'] == 'assistant' -%}"
    "{{- raise_exception('messages[' ~ loop.index0 ~ ']: two assistant turns in a row (messages ' ~ (loop.index0 - 1)"
    " ~ ' and ' ~ loop.index0 ~ ')') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and messages[-1]['role'] == 'assistant' -%}"
    "{{- raise_exception('the conversation ends with an assistant turn but a reply is requested "
    "(add_generation_prompt=True); end it with a user turn') -}}"
    "{%- endif -%}"
)
"""The role and turn-order rules of `conversation.validate_conversation`, word for word, for front ends that render the
template without calling it (vLLM's OpenAI server): the roles are system, user and assistant, an
assistant turn never comes first or twice in a row, and a reply is only asked for after a user turn."""

CHAT_TEMPLATE = TURN_ORDER_CHECK + (
    "{%- set audio = namespace(count=0) -%}"
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|role_start|>system<|role_end|>' + (default_system if default_system is defined else '"
    + DEFAULT_SYSTEM_PROMPT
    + "') + '<|turn_end|>' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|role_start|>' + message['role'] + '<|role_end|>' -}}"
    "{%- set content = message['content'] -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}"
    "{%- for key, line in [('image', '(<image>./</image>)\\n'), ('audio', ': (<audio>./</audio>)\\n')] -%}"
    "{%- set value = content.get(key) -%}"
    "{%- if value is none -%}{%- set items = [] -%}"
    "{%- elif value is sequence and value is not string and value is not mapping and value.ndim is not defined"
    " and value.decode is not defined and value.copy is defined and value.count is defined -%}"
    "{%- set items = value -%}"
    "{%- else -%}{%- set items = [value] -%}{%- endif -%}"
    "{%- for item in items -%}"
    "{%- if key == 'audio' -%}{%- set audio.count = audio.count + 1 -%}"
    "{{- 'Audio ' + audio.count|string + line -}}"
    "{%- else -%}{{- line -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endfor -%}"
    "{{- content.get('text') or '' -}}"
    "{%- endif -%}"
    "{{- '<|turn_end|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|role_start|>assistant<|role_end|>' -}}{%- endif -%}"
)
