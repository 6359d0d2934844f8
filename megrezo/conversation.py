"""What a conversation is: a list of message dicts, and the rules it must follow before any media is decoded.

A message is `{"role": "system" | "user" | "assistant", "content": ...}`; its content is a string or a dict with
`text`, `image` and `audio` keys, where a list holds several media items and any other value is one. The chat
template sees a view of the conversation with one marker per media item (`template_view`), so it renders the same
placeholders whatever form the media take. This file is shipped next to a checkpoint as remote code.
"""

ROLES = ("system", "user", "assistant")
CONTENT_KEYS = ("text", "image", "audio")

Message = dict
Conversation = list[Message]


def media_items(value: object) -> list:
    """A content value as its media items: a list holds several, anything else (a path, a PIL image, an array, an
    `(array, rate)` tuple, bytes, a dict) is one. The chat template follows the same rule."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def validate_conversation(messages: object, add_generation_prompt: bool) -> Conversation:
    """Checks the message list's structure before any media is decoded, so mistakes fail fast and by name."""
    if not isinstance(messages, list | tuple):
        raise ValueError(f"a conversation must be a list of message dicts, got {type(messages).__name__}")
    if len(messages) == 0:
        raise ValueError("empty message list: a conversation needs at least one message")
    previous_role = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"messages[{index}] must be a dict with 'role' and 'content', got {message!r:.100}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"messages[{index}]: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if isinstance(content, str):
            _check_unicode(content, index)
            has_content = content.strip() != ""
        elif isinstance(content, dict):
            unknown = sorted(set(content) - set(CONTENT_KEYS))
            if unknown:
                raise ValueError(f"messages[{index}]: unknown content keys {unknown}; expected {list(CONTENT_KEYS)}")
            text = content.get("text")
            if text is not None and not isinstance(text, str):
                raise ValueError(f"messages[{index}]: 'text' must be a string, got {type(text).__name__}")
            _check_unicode(text or "", index)
            has_content = bool(text and text.strip()) or any(
                media_items(content.get(kind)) for kind in ("image", "audio")
            )
        else:
            raise ValueError(
                f"messages[{index}]: content must be a string or a dict with text/image/audio, "
                f"got {type(content).__name__}"
            )
        if not has_content:
            raise ValueError(f"messages[{index}] ({role}): empty content")
        if role == "assistant" and previous_role == "assistant":
            raise ValueError(f"messages[{index}]: two assistant turns in a row (messages {index - 1} and {index})")
        if role == "assistant" and index == 0:
            raise ValueError("messages[0]: a conversation cannot start with an assistant turn")
        previous_role = role
    if add_generation_prompt and previous_role == "assistant":
        raise ValueError(
            "the conversation ends with an assistant turn but a reply is requested (add_generation_prompt=True); "
            "end it with a user turn"
        )
    return list(messages)


def _check_unicode(text: str, index: int) -> None:
    """A lone surrogate (from text decoded with errors="surrogateescape", or half of a broken UTF-16 pair) is not
    Unicode text: the tokenizer cannot encode it, so name it and where it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"messages[{index}]: the text is not valid Unicode: lone surrogate {text[error.start]!r} at character "
            f"{error.start}"
        ) from None


def template_view(messages: Conversation) -> Conversation:
    """The conversation as the chat template sees it: text as it is, each media value as a list with one marker per
    item, so any template that counts items renders the same placeholders whatever form the media take."""
    view = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = {"text": content.get("text") or ""} | {
                kind: [kind] * len(items) for kind in ("image", "audio") if (items := media_items(content.get(kind)))
            }
        view.append({"role": message["role"], "content": content})
    return view
