"""`sdrt samplers`: list the samplers and schedules this sdrt knows, with each sampler's options."""

import click


@click.command()
def samplers() -> None:
    """List samplers (name, title, stochastic), their options (default, range) and the schedules."""
    from ..schedulers import REGISTRY, SIGMA_SCHEDULES

    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        kind = "stochastic" if spec.stochastic else "deterministic"
        click.echo(f"{name:14s} {spec.title:16s} {kind}")
        for option_name, option in spec.options.items():
            setting = f"{option_name}={option.default:g}"
            click.echo(f"    --sampler-option {setting:12s} {option.range_text:12s} {option.help}")
    click.echo(f"schedules: {', '.join(SIGMA_SCHEDULES)}")
