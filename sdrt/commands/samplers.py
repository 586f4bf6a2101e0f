"""`sdrt samplers`: list the samplers and schedules this sdrt knows."""

import click


@click.command()
def samplers() -> None:
    """List samplers (name, title, stochastic) and schedules."""
    from ..schedulers import REGISTRY, SIGMA_SCHEDULES

    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        kind = "stochastic" if spec.stochastic else "deterministic"
        click.echo(f"{name:14s} {spec.title:16s} {kind}")
    click.echo(f"schedules: {', '.join(SIGMA_SCHEDULES)}")
