rule baselines:
    input:
        manifest=LAYOUT.manifest("{model}"),
        features=feature_net(),
        stats=reference_stats(),
    output:
        baselines=LAYOUT.baselines("{model}"),
    log:
        LAYOUT.log("baselines", "{model}"),
    benchmark:
        LAYOUT.benchmark("baselines", "{model}")
    conda:
        "../../envs/torch.yaml"
    threads: 1  # inference only: the same numbers on any thread count, so jobs pack onto the cores
    resources:
        gpu=GPUS,
    params:
        cfg=model_json("baselines"),
    shell:
        "lcsc baselines --config-json {params.cfg:q} --threads {threads:q}"
        " --wildcards model={wildcards.model:q} --model {wildcards.model:q}"
        " --manifest {input.manifest:q} --features {input.features:q} --stats {input.stats:q}"
        " --out {output.baselines:q} > {log:q} 2>&1"


rule search:
    input:
        manifest=LAYOUT.manifest("{model}"),
        features=feature_net(),
        stats=reference_stats(),
        baselines=LAYOUT.baselines("{model}"),
    output:
        coefficients=LAYOUT.coefficients("{model}", "{nfe}"),
        history=LAYOUT.history("{model}", "{nfe}"),
        best=LAYOUT.best_weights("{model}", "{nfe}"),
    log:
        LAYOUT.log("search", "{model}-nfe{nfe}"),
    benchmark:
        LAYOUT.benchmark("search", "{model}-nfe{nfe}")
    conda:
        "../../envs/torch.yaml"
    threads: 1  # inference only: the same numbers on any thread count, so jobs pack onto the cores
    resources:
        gpu=GPUS,
    params:
        cfg=search_json,
        journal=search_journal,
    shell:
        "lcsc search --config-json {params.cfg:q} --threads {threads:q}"
        " --wildcards model={wildcards.model:q},nfe={wildcards.nfe:q} --model {wildcards.model:q}"
        " --manifest {input.manifest:q} --features {input.features:q} --stats {input.stats:q}"
        " --baselines {input.baselines:q} --coefficients {output.coefficients:q} --history {output.history:q}"
        " --best {output.best:q} --journal {params.journal:q} > {log:q} 2>&1"


# The other searches of search.repeats: the same job with seeds of their own (lcsc.kernel.models.search_repeat).
rule search_repeat:
    input:
        manifest=LAYOUT.manifest("{model}"),
        features=feature_net(),
        stats=reference_stats(),
        baselines=LAYOUT.baselines("{model}"),
    output:
        coefficients=LAYOUT.coefficients("{model}", "{nfe}", "{repeat}"),
        history=LAYOUT.history("{model}", "{nfe}", "{repeat}"),
        best=LAYOUT.best_weights("{model}", "{nfe}", "{repeat}"),
    log:
        LAYOUT.log("search", "{model}-nfe{nfe}-r{repeat}"),
    benchmark:
        LAYOUT.benchmark("search", "{model}-nfe{nfe}-r{repeat}")
    conda:
        "../../envs/torch.yaml"
    threads: 1  # inference only: the same numbers on any thread count, so jobs pack onto the cores
    resources:
        gpu=GPUS,
    params:
        cfg=search_json,
        journal=search_journal,
    shell:
        "lcsc search --config-json {params.cfg:q} --threads {threads:q}"
        " --wildcards model={wildcards.model:q},nfe={wildcards.nfe:q},repeat={wildcards.repeat:q}"
        " --model {wildcards.model:q} --repeat {wildcards.repeat:q}"
        " --manifest {input.manifest:q} --features {input.features:q} --stats {input.stats:q}"
        " --baselines {input.baselines:q} --coefficients {output.coefficients:q} --history {output.history:q}"
        " --best {output.best:q} --journal {params.journal:q} > {log:q} 2>&1"
