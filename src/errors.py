"""User-facing errors: one line saying what is wrong and how to fix it, then a non-zero exit."""


class UserError(Exception):
    """A mistake in the user's config, data or environment (not a bug in the framework).

    Entry points print ``str(error)`` as one line and exit with status 2; anything else that
    escapes is a bug and keeps its traceback.
    """


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


def find_user_error(err: BaseException | None) -> UserError | None:
    """The UserError behind an exception, through wrappers such as Hydra's InstantiationException."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
