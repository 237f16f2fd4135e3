"""User-facing errors: what was wrong, where, and what to do."""


class UserError(Exception):
    """An error caused by input or configuration, reported without a traceback.

    The message must say what was wrong, where (a path or config key) and what to do about it.
    """

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        parts = [what]
        if where:
            parts.append(f"  where: {where}")
        if fix:
            parts.append(f"  what to do: {fix}")
        super().__init__("\n".join(parts))
