rule baselines:
    input:
        manifest=LAYOUT.manifest("{model}"),
        features=feature_net(),
        stats=reference_stats(),
    output:
        baselines=LAYOUT.baselines("{model}"),
    log:
        LAYOUT.log("baselines", "{model}"),
    params:
        cfg=model_json("baselines"),
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=GPUS,
    shell:
        "lcsc baselines --config-json {params.cfg:q} --threads {threads}"
        " --wildcards model={wildcards.model} --model {wildcards.model}"
        " --manifest {input.manifest} --features {input.features} --stats {input.stats}"
        " --out {output.baselines} 2>&1 | tee {log}"


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
    params:
        cfg=search_json,
        out_dir=lambda wildcards, output: os.path.dirname(output.coefficients),
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=GPUS,
    shell:
        "lcsc search --config-json {params.cfg:q} --threads {threads}"
        " --wildcards model={wildcards.model},nfe={wildcards.nfe} --model {wildcards.model}"
        " --manifest {input.manifest} --features {input.features} --stats {input.stats}"
        " --baselines {input.baselines} --out-dir {params.out_dir} 2>&1 | tee {log}"
