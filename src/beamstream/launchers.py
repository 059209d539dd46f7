"""Which rank a process is, as the launcher that started it says: Open MPI's mpirun, MPICH/Hydra's (and srun's
PMI), or srun's own (``beamstream produce --rank-from-env``)."""

from __future__ import annotations

from collections.abc import Mapping

from beamstream.errors import OptionError

LAUNCHER_RANKS = (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"),
                  ("SLURM_PROCID", "SLURM_NTASKS"))
"""Where launchers put a process's rank and their number: Open MPI's mpirun, MPICH/Hydra's (and srun's PMI),
srun's own. The first pair set wins (an mpirun inside a Slurm job also sees the job's SLURM_PROCID)."""


def launcher_rank(environment: Mapping[str, str]) -> tuple[int, int]:
    """(rank, ranks) of this process, from the first of :data:`LAUNCHER_RANKS` set in ``environment``.

    Raises OptionError naming the variables when none is set, or when one holds no rank below its count.
    """
    for rank_name, size_name in LAUNCHER_RANKS:
        if rank_name in environment and size_name in environment:
            rank, size = environment[rank_name], environment[size_name]
            if not (rank.isdigit() and size.isdigit() and int(rank) < int(size)):
                raise OptionError(f"--rank-from-env: {rank_name}={rank!r} and {size_name}={size!r} are not a rank "
                                  "and a larger count of ranks")
            return int(rank), int(size)
    names = ", ".join(f"{rank_name}/{size_name}" for rank_name, size_name in LAUNCHER_RANKS)
    raise OptionError(f"--rank-from-env: no launcher set this process's rank (none of {names}); run it under srun "
                      "or mpirun, or give --rank and --producers")
