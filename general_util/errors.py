"""The errors that are the user's to fix. The entry points print them as one line (`error: <message>`)
and exit 2, without a traceback; anything else is a bug and keeps its traceback.

`general_util` is the ground floor of the project: this module imports nothing else of it."""


class UserError(Exception):
    """A problem with the user's input (configuration, data, checkpoint, environment); the message is one
    line that names where (key, or file:line) and what to do."""


class ConfigError(UserError, ValueError):
    """An unusable setting. The message names the key (or the evaluator/dataset it belongs to)."""


def find_user_error(error: BaseException) -> UserError | None:
    """The UserError behind `error`: itself, or the first in its chain of causes. Hydra's `instantiate`
    wraps whatever a `_target_` raises in an InstantiationException raised `from` the original."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def config_key_of(error: BaseException) -> str | None:
    """The config key Hydra names in an InstantiationException ("full_key: evaluators.dev_loss")."""
    for line in str(error).splitlines():
        if line.startswith("full_key: "):
            return line[len("full_key: "):].strip()
    return None


def one_line(error: BaseException) -> str:
    """What the entry points print for a user error: `error: <message>`, prefixed with the config key of
    the node whose construction raised a ConfigError (when the message does not already start with it)."""
    user_error = find_user_error(error) or error
    message = " ".join(str(user_error).split())  # one line, whatever the message held
    key = config_key_of(error) if user_error is not error else None
    if key and isinstance(user_error, ConfigError) and not message.startswith(key):
        message = f"{key}: {message}"
    return f"error: {message}"
