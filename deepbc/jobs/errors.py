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

    def __reduce__(self):
        # Pickled by its parts (an error raised in a worker process): args hold only the joined message.
        return self.__class__, (self.what, self.where, self.fix)


def delete_and_rerun(path, folder: bool = False, remakes: str | None = None) -> str:
    """The "what to do" for a broken result of the workflow: delete it, then rerun the same snakemake
    command, which remakes what is missing before the job that failed runs again (``remakes`` says
    what that is). A literal action, with the path as the job sees it (relative to the workflow's
    working directory); tests/test_recovery.py follows it as written."""
    target = f"the folder {str(path).rstrip('/')}/" if folder else str(path)
    return f"delete {target} and rerun the same snakemake command" + (f" ({remakes})" if remakes else "")


def rebuild_store(store_dir) -> str:
    """What to do about a dataset's broken encoded store (a shard missing or corrupt, store.json
    unreadable or not of the manifest's images)."""
    return delete_and_rerun(store_dir, folder=True,
                            remakes="it re-encodes the dataset and rewrites the indexes that list the store")
