"""Write the bundled tarot sample (data/samples/tarot/readings.jsonl): Portuguese Major Arcana readings.

Each line is a JSON object {"id", "card", "question", "reading"} in Brazilian Portuguese (UTF-8, written
with ensure_ascii=False). The readings are generated from templates plus per-card vocabulary (keywords,
upright meaning, advice), so every card's readings share that card's characteristic words while the
question theme (amor, trabalho, saúde, dinheiro, espiritualidade) and sentence choices add variety. The
repository ships no third-party text. There are 462 clean records, 21 for each of the 22 Major Arcana;
about 10% of them have an empty question (a reading without a stated context).

On top of the 462 clean records the file keeps deliberate quirks the cleaning step exists for:
  - 3 records whose reading has leading/trailing whitespace and doubled spaces inside;
  - 2 records with an empty reading "";
  - 2 records whose card is not a Major Arcana name ("Ás de Copas", "Rainha de Espadas").
That makes 469 lines in total. Generation is deterministic (random.Random(2024)): running the script twice
yields identical bytes. Run once; the output is committed.

    python scripts/make_tarot_sample.py
"""

import json
import random
import re
from pathlib import Path

PER_CARD = 21
SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
EMPTY_QUESTION_RATE = 0.1

# name -> (keywords, upright meaning sentences, advice sentences)
CARDS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "O Louco": (
        ["liberdade", "espontaneidade", "novos começos", "aventura", "fé no desconhecido", "leveza"],
        ["O Louco fala de um salto no vazio feito com confiança, sem mapa e sem medo de errar.",
         "É o começo da jornada, quando tudo ainda é possibilidade e a curiosidade guia os passos.",
         "A carta mostra um espírito livre, disposto a deixar a bagagem para trás e seguir adiante."],
        ["Arrisque o primeiro passo, mas olhe por onde pisa.",
         "Permita-se experimentar sem exigir garantias de antemão.",
         "Mantenha a leveza e não deixe que o medo do ridículo decida por você."],
    ),
    "O Mago": (
        ["habilidade", "iniciativa", "poder pessoal", "manifestação", "concentração", "talento"],
        ["O Mago indica que você já tem todas as ferramentas necessárias sobre a mesa.",
         "É a carta da vontade que se transforma em ação, unindo intenção, talento e foco.",
         "A energia do Mago lembra que a palavra e o gesto certos podem materializar um projeto."],
        ["Use seus talentos com intenção clara e comece agora.",
         "Concentre a energia em um objetivo de cada vez.",
         "Comunique o que deseja com firmeza e confiança."],
    ),
    "A Sacerdotisa": (
        ["intuição", "mistério", "silêncio", "sabedoria interior", "segredos", "paciência"],
        ["A Sacerdotisa guarda o conhecimento que não se aprende nos livros, mas no silêncio.",
         "É a carta da intuição profunda, que revela aos poucos o que ainda está velado.",
         "Ela pede recolhimento e escuta, porque nem tudo precisa ser dito agora."],
        ["Confie na sua voz interior antes de buscar opiniões de fora.",
         "Observe mais e fale menos por enquanto.",
         "Anote seus sonhos e pressentimentos; há respostas escondidas neles."],
    ),
    "A Imperatriz": (
        ["fertilidade", "abundância", "criatividade", "cuidado", "sensualidade", "natureza"],
        ["A Imperatriz traz a força criadora que faz tudo florescer ao seu redor.",
         "É a carta da abundância e do cuidado, de quem nutre e é nutrido.",
         "A energia da Imperatriz favorece a beleza, o prazer e tudo o que cresce com carinho."],
        ["Cultive o que você ama com paciência e generosidade.",
         "Reserve tempo para o prazer, a arte e o contato com a natureza.",
         "Cuide de si com o mesmo afeto que oferece aos outros."],
    ),
    "O Imperador": (
        ["estrutura", "autoridade", "estabilidade", "disciplina", "liderança", "proteção"],
        ["O Imperador representa a ordem, as regras claras e a mão firme que organiza o caos.",
         "É a carta da liderança responsável, que constrói bases sólidas e duradouras.",
         "A energia do Imperador pede planejamento, limites definidos e palavra cumprida."],
        ["Organize sua rotina e assuma o comando das suas decisões.",
         "Estabeleça limites claros e respeite-os.",
         "Aja com disciplina, mas sem rigidez excessiva."],
    ),
    "O Hierofante": (
        ["tradição", "ensinamento", "fé", "instituições", "orientação", "valores"],
        ["O Hierofante fala de tradição, de ensinamentos transmitidos e de valores compartilhados.",
         "É a carta do mestre e do conselheiro, que orienta pelo caminho já conhecido.",
         "A energia do Hierofante favorece compromissos formais, estudos e rituais."],
        ["Busque a orientação de alguém mais experiente.",
         "Respeite as regras do grupo, mas entenda o sentido delas.",
         "Volte aos valores que sempre sustentaram você."],
    ),
    "Os Enamorados": (
        ["escolha", "união", "harmonia", "afinidade", "compromisso", "valores"],
        ["Os Enamorados falam de uma escolha importante, feita com o coração e a consciência.",
         "É a carta da união e da afinidade, quando duas partes se encontram em harmonia.",
         "A energia dos Enamorados pede coerência entre o que você sente e o que você faz."],
        ["Escolha de acordo com seus valores, não por conveniência.",
         "Seja honesto sobre o que deseja de verdade.",
         "Ouça o coração, mas não ignore a razão."],
    ),
    "O Carro": (
        ["vitória", "determinação", "movimento", "controle", "conquista", "direção"],
        ["O Carro anuncia avanço e conquista para quem segura as rédeas com firmeza.",
         "É a carta da determinação, que vence obstáculos pela força de vontade.",
         "A energia do Carro traz movimento, viagens e a sensação de seguir em frente."],
        ["Defina o rumo e mantenha o foco até o fim.",
         "Domine as forças opostas dentro de você e siga em frente.",
         "Não espere o momento perfeito; avance com determinação."],
    ),
    "A Força": (
        ["coragem", "paciência", "autocontrole", "compaixão", "força interior", "gentileza"],
        ["A Força mostra que a verdadeira coragem é gentil e domina o instinto sem violência.",
         "É a carta da força interior, da paciência que acalma o leão sem feri-lo.",
         "A energia da Força fala de autocontrole, compaixão e confiança em si mesmo."],
        ["Enfrente o desafio com calma e firmeza ao mesmo tempo.",
         "Trate suas emoções com paciência, não com repressão.",
         "Confie na sua resistência; você é mais forte do que imagina."],
    ),
    "O Eremita": (
        ["introspecção", "solidão", "busca interior", "prudência", "sabedoria", "luz interior"],
        ["O Eremita se afasta do barulho para encontrar a própria verdade à luz da lanterna.",
         "É a carta da introspecção e da busca interior, que pede tempo e silêncio.",
         "A energia do Eremita favorece a reflexão, o estudo e a prudência."],
        ["Reserve um tempo a sós para pensar com clareza.",
         "Não tenha pressa; a resposta virá passo a passo.",
         "Procure a sabedoria de quem já percorreu esse caminho."],
    ),
    "A Roda da Fortuna": (
        ["ciclos", "destino", "mudança", "sorte", "reviravolta", "oportunidade"],
        ["A Roda da Fortuna lembra que tudo gira e que nenhum momento dura para sempre.",
         "É a carta dos ciclos e das reviravoltas do destino, que trazem oportunidades inesperadas.",
         "A energia da Roda da Fortuna anuncia mudança, sorte e um novo capítulo."],
        ["Aproveite a maré favorável enquanto ela durar.",
         "Aceite a mudança em vez de resistir a ela.",
         "Fique atento às oportunidades que surgem de repente."],
    ),
    "A Justiça": (
        ["equilíbrio", "verdade", "responsabilidade", "imparcialidade", "clareza", "honestidade"],
        ["A Justiça pesa cada ação na balança e devolve a cada um o que lhe cabe.",
         "É a carta da verdade e da responsabilidade, em que causa e efeito ficam claros.",
         "A energia da Justiça favorece contratos, acordos e decisões imparciais."],
        ["Aja com honestidade e assuma as consequências das suas escolhas.",
         "Analise os fatos com imparcialidade antes de decidir.",
         "Busque o equilíbrio entre o que você dá e o que recebe."],
    ),
    "O Enforcado": (
        ["pausa", "entrega", "nova perspectiva", "sacrifício", "espera", "desapego"],
        ["O Enforcado mostra uma pausa necessária, em que o mundo é visto de cabeça para baixo.",
         "É a carta da entrega e da espera, que revela uma nova perspectiva sobre a situação.",
         "A energia do Enforcado pede desapego e a aceitação de um tempo suspenso."],
        ["Não force a situação; às vezes esperar é a melhor ação.",
         "Mude o ângulo de visão antes de tomar uma decisão.",
         "Solte o que já não serve, mesmo que custe um pequeno sacrifício."],
    ),
    "A Morte": (
        ["transformação", "fim de ciclo", "renovação", "desapego", "transição", "renascimento"],
        ["A Morte raramente fala de fim literal; ela anuncia uma transformação profunda.",
         "É a carta do fim de ciclo, que abre espaço para a renovação e o renascimento.",
         "A energia da Morte pede que você encerre o que acabou para que o novo possa chegar."],
        ["Deixe ir o que já cumpriu seu papel.",
         "Aceite a transição sem se agarrar ao passado.",
         "Encare o fim como a preparação de um novo começo."],
    ),
    "A Temperança": (
        ["moderação", "equilíbrio", "paciência", "cura", "harmonia", "meio-termo"],
        ["A Temperança mistura as águas com calma, buscando o ponto exato do equilíbrio.",
         "É a carta da moderação e da cura, que harmoniza opostos com paciência.",
         "A energia da Temperança favorece o meio-termo, a serenidade e a recuperação gradual."],
        ["Evite os excessos e encontre o meio-termo.",
         "Tenha paciência com o processo; a cura é gradual.",
         "Combine razão e emoção na medida certa."],
    ),
    "O Diabo": (
        ["apego", "tentação", "vícios", "materialismo", "desejo", "amarras"],
        ["O Diabo revela as amarras que nos prendem, muitas vezes escolhidas por nós mesmos.",
         "É a carta da tentação e do apego, dos desejos que viram dependência.",
         "A energia do Diabo fala de materialismo, vícios e relações que aprisionam."],
        ["Reconheça o que controla você e decida se quer continuar preso.",
         "Cuidado com promessas fáceis e prazeres passageiros.",
         "Lembre-se de que as correntes podem ser retiradas."],
    ),
    "A Torre": (
        ["ruptura", "revelação", "mudança súbita", "queda", "libertação", "despertar"],
        ["A Torre anuncia uma ruptura súbita que derruba estruturas construídas sobre bases frágeis.",
         "É a carta da revelação repentina, o raio que ilumina a verdade de uma vez.",
         "A energia da Torre traz mudança abrupta, mas também libertação e despertar."],
        ["Não se agarre ao que está desmoronando; reconstrua sobre bases mais firmes.",
         "Aceite a verdade revelada, por mais desconfortável que seja.",
         "Depois do susto, veja o espaço livre que se abriu."],
    ),
    "A Estrela": (
        ["esperança", "inspiração", "serenidade", "cura", "fé", "renovação"],
        ["A Estrela brilha depois da tempestade, trazendo esperança e serenidade.",
         "É a carta da inspiração e da cura, que renova a fé no futuro.",
         "A energia da Estrela favorece sonhos, generosidade e confiança no caminho."],
        ["Mantenha a esperança acesa e siga sua inspiração.",
         "Permita-se sonhar alto e compartilhar seus dons.",
         "Confie que o pior já passou."],
    ),
    "A Lua": (
        ["ilusão", "medo", "intuição", "incerteza", "sonhos", "inconsciente"],
        ["A Lua ilumina o caminho apenas pela metade, e as sombras parecem maiores do que são.",
         "É a carta da ilusão e da incerteza, em que medos e sonhos se confundem.",
         "A energia da Lua fala do inconsciente, da intuição e de situações pouco claras."],
        ["Não tome decisões importantes enquanto tudo estiver nebuloso.",
         "Separe o que é fato do que é medo ou fantasia.",
         "Escute a intuição, mas confirme as informações."],
    ),
    "O Sol": (
        ["alegria", "sucesso", "clareza", "vitalidade", "otimismo", "celebração"],
        ["O Sol traz luz, alegria e a clareza de um dia sem nuvens.",
         "É a carta do sucesso e da vitalidade, que aquece tudo o que toca.",
         "A energia do Sol favorece o otimismo, a celebração e a expressão sincera."],
        ["Mostre-se como você é e aproveite o bom momento.",
         "Celebre suas conquistas e compartilhe a alegria.",
         "Aja com otimismo; o cenário é favorável."],
    ),
    "O Julgamento": (
        ["despertar", "chamado", "renascimento", "avaliação", "perdão", "segunda chance"],
        ["O Julgamento soa como um chamado para despertar e fazer um balanço da própria vida.",
         "É a carta do renascimento e da segunda chance, depois de uma avaliação sincera.",
         "A energia do Julgamento pede perdão, reconciliação com o passado e resposta ao chamado."],
        ["Avalie o caminho percorrido e responda ao que a vida pede agora.",
         "Perdoe a si mesmo e aos outros para seguir mais leve.",
         "Aproveite a segunda chance que está se apresentando."],
    ),
    "O Mundo": (
        ["realização", "conclusão", "plenitude", "integração", "conquista", "reconhecimento"],
        ["O Mundo marca a conclusão de um ciclo com a sensação de missão cumprida.",
         "É a carta da realização e da plenitude, em que todas as partes se integram.",
         "A energia do Mundo favorece conquistas, reconhecimento e horizontes mais amplos."],
        ["Celebre o que você completou antes de começar o próximo ciclo.",
         "Abra-se a novos horizontes, inclusive viagens.",
         "Reconheça o quanto você cresceu até aqui."],
    ),
}

QUESTIONS = {
    "amor": ["Como está minha vida amorosa?", "Essa pessoa gosta de mim?", "Meu relacionamento tem futuro?",
             "Vou encontrar alguém especial este ano?", "Devo voltar com meu ex?",
             "O que preciso saber sobre meu casamento?"],
    "trabalho": ["Como vai ser minha vida profissional?", "Devo aceitar a nova proposta de emprego?",
                 "Vou conseguir a promoção?", "É hora de mudar de carreira?",
                 "Como está meu ambiente de trabalho?", "Meu projeto vai dar certo?"],
    "saúde": ["Como está minha saúde?", "O que posso fazer pelo meu bem-estar?",
              "Como lidar com o cansaço que venho sentindo?", "Vou me recuperar logo?",
              "Como cuidar melhor da minha saúde emocional?"],
    "dinheiro": ["Como ficam minhas finanças?", "Devo fazer esse investimento?",
                 "Vou conseguir pagar minhas dívidas?", "É um bom momento para comprar uma casa?",
                 "Como melhorar minha situação financeira?"],
    "espiritual": ["Qual é a mensagem para minha vida espiritual?", "Estou no caminho certo?",
                   "O que o universo quer me mostrar agora?", "Qual lição preciso aprender neste momento?",
                   "Como encontrar paz interior?"],
}

OPENERS = [
    "{carta} surge nesta tiragem trazendo {k1} e {k2}.",
    "Ao tirar {carta}, o tema central é {k1}.",
    "{carta} aparece como resposta e fala de {k1}, {k2} e {k3}.",
    "A presença {de} traz à tona {k1} e {k2}.",
    "{carta} chega com uma mensagem de {k1}.",
    "Saiu {carta}, carta ligada a {k1} e {k2}.",
]

THEME_LINES = {
    "amor": ["No amor, a energia {de} destaca {k1} na forma de se relacionar.",
             "Nos relacionamentos, {k1} e {k2} ganham destaque nas próximas semanas.",
             "Para o coração, este é um momento de {k1}, e isso vale tanto para quem está só quanto para quem está a dois.",
             "Na vida afetiva, a influência {de} traz {k2} e convida a uma conversa sincera."],
    "trabalho": ["No trabalho, a influência {de} coloca em foco {k1} diante de colegas e projetos.",
                 "Na carreira, {k1} e {k2} serão decisivos para os próximos passos.",
                 "Profissionalmente, este é um período marcado por {k1}, que pode mudar a forma como você é visto.",
                 "Nos projetos profissionais, a energia {de} destaca {k2} e pede decisões bem pensadas."],
    "saúde": ["Na saúde, a energia {de} chama atenção para questões de {k1} no dia a dia.",
              "Para o bem-estar, {k1} e {k2} merecem atenção para recuperar o equilíbrio do corpo e da mente.",
              "Quanto à saúde, este é um momento de {k1}; respeite os sinais do corpo e procure um profissional se precisar.",
              "No cuidado com o corpo, a influência {de} destaca {k2} e pede uma rotina mais consciente."],
    "dinheiro": ["Nas finanças, a influência {de} põe {k1} em evidência antes de qualquer gasto grande.",
                 "Com o dinheiro, {k1} e {k2} estarão em jogo nas próximas decisões.",
                 "Financeiramente, este é um período de {k1}, e vale revisar o orçamento com cuidado.",
                 "Nos investimentos, a energia {de} traz à tona {k2}; evite apostas impulsivas."],
    "espiritual": ["No caminho espiritual, a energia {de} convida a olhar para {k1} com mais presença.",
                   "Para a alma, {k1} e {k2} são os grandes temas deste momento.",
                   "Espiritualmente, este é um tempo de {k1}, de olhar para dentro e reconhecer o que realmente importa.",
                   "Na busca interior, a influência {de} traz {k2} e um novo sentido para a jornada."],
    "geral": ["De modo geral, a energia {de} colore todas as áreas da vida com {k1}.",
              "Para o momento presente, {k1} e {k2} são as palavras que resumem a mensagem.",
              "Em qualquer área, a influência {de} chama atenção para questões de {k1}."],
}

ADVICE_LEADS = ["Conselho: {a}", "O conselho da carta: {a}", "{A}", "Como orientação: {a}"]

EXTRA_CARDS = ["Ás de Copas", "Rainha de Espadas"]  # Minor Arcana: must be dropped by the cleaning step
MINOR_READINGS = [
    "O Ás de Copas transborda emoção e anuncia um novo afeto, uma amizade sincera ou uma alegria inesperada. "
    "No amor, o coração está aberto para receber. Conselho: deixe os sentimentos fluírem sem medo.",
    "A Rainha de Espadas observa tudo com clareza e fala a verdade sem rodeios. No trabalho, ela pede "
    "objetividade e limites bem definidos. Conselho: seja direta, mas não perca a empatia.",
]


def of_form(card: str) -> str:
    """'O Louco' -> 'do Louco', 'A Força' -> 'da Força', 'Os Enamorados' -> 'dos Enamorados'."""
    article, rest = card.split(" ", 1)
    return {"O": "do", "A": "da", "Os": "dos"}[article] + " " + rest


def make_reading(rng: random.Random, card: str, theme: str) -> str:
    keywords, meanings, advice = CARDS[card]
    while True:
        k1, k2, k3 = rng.sample(keywords, 3)
        fill = {"carta": card, "de": of_form(card), "k1": k1, "k2": k2, "k3": k3}
        sentences = [rng.choice(OPENERS).format(**fill)]
        sentences += rng.sample(meanings, k=rng.choice([1, 1, 2]))
        k4, k5 = rng.sample([k for k in keywords if k not in (k1, k2, k3)], 2)
        sentences.append(rng.choice(THEME_LINES[theme]).format(**{**fill, "k1": k4, "k2": k5}))
        if rng.random() < 0.75:
            tip = rng.choice(advice)
            sentences.append(rng.choice(ADVICE_LEADS).format(A=tip, a=tip[0].lower() + tip[1:]))
        if rng.random() < 0.3:  # sometimes lead with the meaning instead of the opener
            sentences[0], sentences[1] = sentences[1], sentences[0]
        reading = " ".join(sentences)
        if 200 <= len(reading) <= 600 and 2 <= len(SENTENCE_END.findall(reading)) <= 5:
            return reading


def make_record(rng: random.Random, card: str) -> dict:
    theme = rng.choice(sorted(QUESTIONS))
    if rng.random() < EMPTY_QUESTION_RATE:
        question, theme = "", "geral"
    else:
        question = rng.choice(QUESTIONS[theme])
    return {"id": "", "card": card, "question": question, "reading": make_reading(rng, card, theme)}


def main() -> None:
    rng = random.Random(2024)
    out = Path(__file__).resolve().parents[1] / "data" / "samples" / "tarot"
    out.mkdir(parents=True, exist_ok=True)
    records = [make_record(rng, card) for card in CARDS for _ in range(PER_CARD)]
    quirks = []
    for card in ("O Mago", "A Lua", "O Mundo"):  # stray whitespace and doubled spaces
        rec = make_record(rng, card)
        rec["reading"] = "  " + rec["reading"].replace(". ", ".  ", 2).replace(", ", ",  ", 1) + " \n"
        quirks.append(rec)
    for card in ("A Torre", "O Eremita"):  # empty readings
        rec = make_record(rng, card)
        rec["reading"] = ""
        quirks.append(rec)
    for card, reading in zip(EXTRA_CARDS, MINOR_READINGS):  # not a Major Arcana card
        quirks.append({"id": "", "card": card, "question": rng.choice(QUESTIONS["amor"] + QUESTIONS["trabalho"]),
                       "reading": reading})
    records += quirks
    rng.shuffle(records)
    for i, rec in enumerate(records, start=1):
        rec["id"] = f"tarot-{i:04d}"
    with open(out / "readings.jsonl", "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    print(f"wrote {len(records)} records to {out / 'readings.jsonl'}")


if __name__ == "__main__":
    main()
