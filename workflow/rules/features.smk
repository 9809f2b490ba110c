rule train_features:
    output:
        net=LAYOUT.feature_net(TRAINED_FEATURE),
    log:
        LAYOUT.log("train_features", TRAINED_FEATURE),
    benchmark:
        LAYOUT.benchmark("train_features", TRAINED_FEATURE)
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        gpu=GPUS,
    params:
        cfg=stage_json("train_features"),
    shell:
        "lcsc train-features --config-json {params.cfg:q} --threads {threads:q}" " --out {output.net:q} > {log:q} 2>&1"


rule inception_features:
    input:
        weights=FEATURE_WEIGHTS,
    output:
        descriptor=LAYOUT.feature_net(f"inception-{config['features']['mode']}"),
    log:
        LAYOUT.log("inception_features", config["features"]["mode"]),
    benchmark:
        LAYOUT.benchmark("inception_features", config["features"]["mode"])
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        gpu=GPUS,
    params:
        cfg=stage_json("inception_features"),
    shell:
        "lcsc inception-features --config-json {params.cfg:q} --threads {threads:q}"
        " --out {output.descriptor:q} > {log:q} 2>&1"


rule reference_stats:
    input:
        features=feature_net(),
    output:
        stats=LAYOUT.stats(REFERENCE, "{split}", FEATURES),
        grid=LAYOUT.real_grid(REFERENCE, "{split}"),
    log:
        LAYOUT.log("reference_stats", "{split}"),
    benchmark:
        LAYOUT.benchmark("reference_stats", "{split}")
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        gpu=GPUS,
    params:
        cfg=stage_json("reference_stats"),
    shell:
        "lcsc reference-stats --config-json {params.cfg:q} --threads {threads:q}"
        " --wildcards split={wildcards.split:q} --split {wildcards.split:q}"
        " --features {input.features:q} --out {output.stats:q} --grid {output.grid:q} > {log:q} 2>&1"


rule dinov2_features:
    input:
        weights=FEATURE_WEIGHTS,
    output:
        descriptor=LAYOUT.feature_net("dinov2"),
    log:
        LAYOUT.log("dinov2_features", "dinov2"),
    benchmark:
        LAYOUT.benchmark("dinov2_features", "dinov2")
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        gpu=GPUS,
    params:
        cfg=stage_json("dinov2_features"),
    shell:
        "lcsc dinov2-features --config-json {params.cfg:q} --threads {threads:q}"
        " --out {output.descriptor:q} > {log:q} 2>&1"
